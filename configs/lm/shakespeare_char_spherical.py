r"""Quick-start LM with every block matrix reparameterized: `spherical`.

Each column (one output unit's weight vector) is a radius and n−1 hyperspherical
angles; see docs/reparam.md.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_spherical.py --workdir=workdirs/shakespeare_char_spherical

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured (2026-11-22, seed 0, quiet 2-core CPU, experiments/reparam_comparison.py at
1000 steps, commit f9bdb42): val loss 2.283 vs dense 2.104, median step 122 ms vs
dense 63 ms; table in experiments/results/reparam_comparison/.
The full 2000 steps (one run, loaded machine): val loss 2.134.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "spherical"),)
  return c
