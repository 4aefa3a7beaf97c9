r"""Quick-start LM with every block matrix reparameterized: `spherical`.

Each column (one output unit's weight vector) is a radius and n−1 hyperspherical
angles; see docs/reparam.md.  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_spherical.py --workdir=workdirs/shakespeare_char_spherical

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured at 2000 steps (median train step 160 ms vs dense 51 ms at
1000 steps, experiments/results/reparam_comparison/table.md).
Expected: validation loss 2.264 at 1000 steps vs dense 2.104
(experiments/results/reparam_comparison/table.md; the angles are not
weight-decayed); no 2000-step figure without weight decay on the angles is
recorded (the one with it is in that folder's README).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "spherical"),)
  return c
