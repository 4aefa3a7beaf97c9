r"""Quick-start LM with every block matrix reparameterized: `spherical`.

Each column (one output unit's weight vector) is a radius and n−1 hyperspherical
angles; see docs/reparam.md.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_spherical.py --workdir=workdirs/shakespeare_char_spherical

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured so far: a 20-step smoke run only (train loss 4.07 at step 10 to 3.53 at step 20, on a
heavily loaded machine). The 2000-step validation loss comes from
`python -m reparam_jax.ablate experiments/reparam_comparison.py`, not yet run.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "spherical"),)
  return c
