"""Every reparameterisation of the quick-start LM at equal steps.

Each method is its own config, `configs/lm/shakespeare_char_<method>.py`
(dense is the quick-start config itself), all trained for the same 1000
steps (half the quick-start budget, full cosine schedule) so that the eight
runs fit the 2-core CPU in under 20 minutes; `--config.num_steps=2000` gives
the quick-start budget.  The `step` column shows the final step of each run
so unequal budgets are visible. 1 seed by default (`--seeds=3` for mean ± std).

  python -m reparam_jax.ablate experiments/reparam_comparison.py --workdir=runs/ablate/reparam
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

STEPS = 1000

METHODS = ("spherical", "weightnorm", "hypersphere", "lowrank", "variational",
           "prune", "qat")  # prune: gradual magnitude to 75%; qat: int8 W8A8 (docs/compression.md)


def get_experiment() -> Experiment:
  return Experiment(
      name="reparam_comparison",
      description="Char-level Tiny Shakespeare, 1000 steps each: dense vs. each "
                  "parameter transform.",
      overrides={"num_steps": STEPS},
      variants={
          "dense": {"config": "configs/lm/shakespeare_char.py"},
          **{m: {"config": f"configs/lm/shakespeare_char_{m}.py"} for m in METHODS},
          # The pruning schedule in steps: the config's 10%..75% of the run.
          "prune": {"config": "configs/lm/shakespeare_char_prune.py",
                    "reparam.prune_begin": STEPS // 10, "reparam.prune_end": STEPS * 3 // 4},
      },
      seeds=1,  # --seeds=3 for mean ± std
      metrics=[
          Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
          Metric("eval/perplexity", "val ppl", fmt=".2f", goal="min"),
          Metric("params/stored", "stored params", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".1f"),
          Metric("step", "steps", fmt=".0f"),
      ],
      plots=[Plot(x="params/stored", y="eval/loss", logx=True),
             Plot(x="train/step_time_ms", y="eval/loss")],
  )
