"""Low-rank factorisation of the quick-start LM: validation loss vs. rank.

Rows: the dense quick-start model and the low-rank model at rank 4..64, all at
the config's 2000 steps; 1 seed by default (`--seeds=3` for mean ± std). Columns: final validation loss, stored
parameters (what the optimiser updates and checkpoints hold) and step time.

  python -m reparam_jax.ablate experiments/lowrank_rank_sweep.py --workdir=runs/ablate/lowrank
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

DENSE = "configs/lm/shakespeare_char.py"
LOWRANK = "configs/lm/shakespeare_char_lowrank.py"
RANKS = (4, 8, 16, 32, 64)


def get_experiment() -> Experiment:
  return Experiment(
      name="lowrank_rank_sweep",
      description="Char-level Tiny Shakespeare, 2000 steps: dense vs. low-rank "
                  "factorised projections at rank r.",
      config=LOWRANK,
      variants={
          "dense": {"config": DENSE},
          **{f"rank {r}": {"reparam.rank": r} for r in RANKS},
      },
      seeds=1,  # fits the 2-core CPU in ~20 min; --seeds=3 for mean ± std
      metrics=[
          Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
          Metric("params/stored", "stored params", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".1f"),
      ],
      plots=[
          Plot(x="params/stored", y="eval/loss", logx=True),
          Plot(x="reparam.rank", y="eval/loss", logx=True),  # dense: a reference line
      ],
  )
