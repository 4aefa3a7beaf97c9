r"""Quick-start LM with every block matrix reparameterized: `weightnorm`.

Weight normalization (Salimans & Kingma 2016): W = g · v/‖v‖ per output unit.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_weightnorm.py --workdir=workdirs/shakespeare_char_weightnorm

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured (2026-11-22, seed 0, quiet 2-core CPU, experiments/reparam_comparison.py at
1000 steps, commit f9bdb42): val loss 2.145 vs dense 2.104, median step 65 ms vs
dense 63 ms; table in experiments/results/reparam_comparison/.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "weightnorm"),)
  return c
