"""Seed 002 §5.2: the encoder–decoder with low-rank linear layers at several ranks vs dense.

Rows: the dense T5-style model of configs/seq2seq/span_corruption.py and the
same model with every block matrix (self-attention, cross-attention, MLP, both
stacks) factored as W = U Vᵀ at rank r, all pre-trained by span corruption on
Tiny Shakespeare for the config's steps; 1 seed by default.

  python -m reparam_jax.ablate experiments/seq2seq_lowrank.py --workdir=runs/ablate/seq2seq_lowrank
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

DENSE = "configs/seq2seq/span_corruption.py"
LOWRANK = "configs/seq2seq/span_corruption_lowrank.py"
RANKS = (4, 8, 16, 32)


def get_experiment() -> Experiment:
  return Experiment(
      name="seq2seq_lowrank",
      description="T5-style encoder–decoder, span corruption on Tiny Shakespeare characters: "
                  "dense vs. low-rank W = U Vᵀ in every block matrix at rank r.",
      config=LOWRANK,
      variants={
          "dense": {"config": DENSE},
          **{f"rank {r}": {"reparam.rank": r} for r in RANKS},
      },
      seeds=1,
      metrics=[
          Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
          Metric("eval/accuracy", "token acc", fmt=".3f", goal="max"),
          Metric("eval/span_accuracy", "span acc", fmt=".3f", goal="max"),
          Metric("params/stored", "stored params", fmt="si"),
          Metric("train/step_time_ms", "step time (ms)", fmt=".1f"),
      ],
      plots=[
          Plot(x="params/stored", y="eval/loss", logx=True),
          Plot(x="reparam.rank", y="eval/loss", logx=True),
      ],
  )
