r"""Quick start with dropout 0.2 on embeddings, attention probabilities and residuals.

Dropout is active in the train step only (its rng is derived from the step,
so a resumed run draws the same masks); evaluation is deterministic.
Weight decay stays at the quick start's 0.1.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_dropout.py --workdir=workdirs/shakespeare_char_dropout

Hardware: 1 CPU host (2 cores, 24 GiB); slightly slower steps than the quick
start (the attention probabilities are materialized for dropout).
Expected: at 2000 steps this small model underfits, so dropout should cost
validation loss rather than help (nanoGPT uses 0.2 only for its 6-layer,
5000-step model).  Measured: not run yet (~6 min unloaded).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.model.embed_dropout = 0.2
  c.model.attention_dropout = 0.2
  c.model.residual_dropout = 0.2
  return c
