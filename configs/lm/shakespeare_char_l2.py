r"""Quick start with *coupled* L2 (in the loss) instead of decoupled weight decay.

`reg.l2 = 1e-4` adds 1e-4·½ΣW² over every matrix (kernels and embeddings) to
the training loss, and `optimizer.weight_decay = 0`.  Under Adam the two
differ: the coupled gradient 1e-4·W is rescaled by Adam's second-moment
estimate like any other gradient, so weights with large gradients are
barely decayed (Loshchilov & Hutter 2019); the quick start's decoupled
`weight_decay = 0.1` shrinks every matrix by lr·0.1 per step regardless.
This config exists to compare the two (the decoupled one is the
"L2 (weight decay)" row of experiments/regularization.py).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_l2.py --workdir=workdirs/shakespeare_char_l2

Hardware: 1 CPU host (2 cores, 24 GiB), 2 CPU devices as in the quick start.
Runtime: not measured.
Expected: not measured yet (decoupled weight decay 0.1: validation loss 1.898
at step 2000, experiments/results/regularization/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.optimizer.weight_decay = 0.0
  c.reg.l2 = 1e-4
  return c
