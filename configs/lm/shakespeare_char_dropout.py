r"""Quick start with dropout 0.2 on embeddings, attention probabilities and residuals.

Dropout is active in the train step only (its rng is derived from the step,
so a resumed run draws the same masks); evaluation is deterministic.
Weight decay stays at the quick start's 0.1.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_dropout.py --workdir=workdirs/shakespeare_char_dropout

Hardware: 1 CPU host (2 cores, 24 GiB), 2 CPU devices as in the quick start.
Runtime: not measured; steps are slower than the quick start's (the attention
probabilities are materialized for dropout): median 81 vs 67 ms without dropout
(experiments/results/regularization/README.md).
Expected: not measured yet with this config.  At 2000 steps this small model
underfits, so dropout should cost validation loss rather than help: the same
dropout with weight decay 0 reached 2.086 against 1.897 without
(experiments/results/regularization/table.md, rows "dropout" and "none").
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.model.embed_dropout = 0.2
  c.model.attention_dropout = 0.2
  c.model.residual_dropout = 0.2
  return c
