r"""Quick-start LM with every block matrix reparameterized: `weightnorm`.

Weight normalization (Salimans & Kingma 2016): W = g · v/‖v‖ per output unit.
Same data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_weightnorm.py --workdir=workdirs/shakespeare_char_weightnorm

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured (median train step 45 ms vs dense 51 ms,
experiments/results/reparam_comparison/table.md).
Expected: not measured at 2000 steps; at 1000 steps (experiments/reparam_comparison.py)
validation loss 2.145 vs dense 2.104 (experiments/results/reparam_comparison/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "weightnorm"),)
  return c
