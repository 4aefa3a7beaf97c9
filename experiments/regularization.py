"""Regularisers on the quick-start LM: none, L1, L2, dropout, early stopping.

Every variant starts from weight decay 0 (the quick-start config uses 0.1),
so "none" is unregularised. L1 is a penalty `coef * sum|w|` on the weight
matrices added to the training loss (config key `reg.l1`; reparam_jax/regularizers,
docs/regularization.md); L2 is AdamW's decoupled weight decay on matrices and
embeddings (`optimizer.weight_decay`); dropout sets the model's residual,
attention and embedding dropout. Early stopping is read post hoc from the
unregularised runs (the same workdirs as "none"): the validation loss at its
best evaluation and the train loss and step logged there; it selects on the
validation split that it also reports, so it is optimistic (the trainer's own
early stopping, `early_stopping.metric`, does the same selection online and
restores the best params; configs/lm/shakespeare_char_early_stopping.py). 1 seed by default (`--seeds=3` for mean ± std).

The override keys below are the trainer's; if a key is renamed, change it here
(the ablation checks every key against the config before running anything).

  python -m reparam_jax.ablate experiments/regularization.py --workdir=runs/ablate/reg
"""

from reparam_jax.sweeps.experiment import Experiment, Metric, Variant

CONFIG = "configs/lm/shakespeare_char.py"
L1_KEY, L1 = "reg.l1", 1e-6
L2_KEY, L2 = "optimizer.weight_decay", 0.1
DROPOUT_KEYS = ("model.residual_dropout", "model.attention_dropout", "model.embed_dropout")
DROPOUT = 0.2

_EARLY = {"eval/loss": "min", "train/loss": "at_min:eval/loss", "step": "at_min:eval/loss"}


def get_experiment() -> Experiment:
  return Experiment(
      name="regularization",
      description="Char-level Tiny Shakespeare, 2000 steps: regularisers vs. none. "
                  "Early stopping = the 'none' runs read at their best validation loss.",
      config=CONFIG,
      overrides={L2_KEY: 0.0},
      variants={
          "none": {},
          "L1": {L1_KEY: L1},
          "L2 (weight decay)": {L2_KEY: L2},
          "dropout": {k: DROPOUT for k in DROPOUT_KEYS},
          "early stopping": Variant({}, reduce=_EARLY),
      },
      seeds=1,  # fits the 2-core CPU in ~20 min; --seeds=3 for mean ± std
      metrics=[
          Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
          Metric("train/loss", "train loss", reduce="last", fmt=".3f"),
          Metric("step", "step", fmt=".0f"),
      ],
      curves=("train/loss", "eval/loss"),
  )
