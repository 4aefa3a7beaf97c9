"""SST-2 sentiment: BERT-style encoder vs. ALBERT-projected vs. distilled student.

ALBERT-projected factorises the embedding through a low-dimensional projection
and shares layers; the distilled student is a small encoder trained on the
logits of this ablation's own "encoder" run with the same seed (its
`distill.teacher` is that run's workdir, so the student runs after it). Columns: validation accuracy, stored parameters and step
time; 1 seed by default (`--seeds=3` for mean ± std).

  python -m reparam_jax.ablate experiments/sst2.py --workdir=runs/ablate/sst2
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot


def get_experiment() -> Experiment:
  return Experiment(
      name="sst2",
      description="SST-2 (GLUE) validation accuracy.",
      variants={
          "encoder": {"config": "configs/sst2/encoder.py"},
          "ALBERT-projected": {"config": "configs/sst2/albert_projected.py"},
          "distilled student": {"config": "configs/sst2/distilled_student.py",
                                "distill.teacher": "{variant:encoder}"},
      },
      seeds=1,  # fits the 2-core CPU in ~20 min; --seeds=3 for mean ± std
      metrics=[
          Metric("eval/accuracy", "val accuracy", fmt=".3f", goal="max"),
          Metric("eval/loss", "val loss", fmt=".3f"),
          Metric("params/stored", "stored params", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".1f"),
      ],
      plots=[Plot(x="params/stored", y="eval/accuracy", logx=True)],
      curves=("train/loss", "eval/loss"),
  )
