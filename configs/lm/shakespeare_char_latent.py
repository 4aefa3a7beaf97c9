r"""Quick-start LM with every block matrix reparameterized: `latent(dim=16)`.

A low-dimensional latent z = μ + σ·ε decoded linearly into each weight.  Same
data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_latent.py --workdir=workdirs/shakespeare_char_latent

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured.
Expected: not measured yet.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "latent(dim=16)"),)
  return c
