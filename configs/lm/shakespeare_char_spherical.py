r"""Quick-start LM with every block matrix reparameterized: `spherical`.

Each column (one output unit's weight vector) is a radius and n−1 hyperspherical
angles; see docs/reparam.md.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_spherical.py --workdir=workdirs/shakespeare_char_spherical

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.  Measured: see experiments/results/reparam_comparison/.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "spherical"),)
  return c
