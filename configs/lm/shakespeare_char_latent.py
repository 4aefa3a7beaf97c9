r"""Quick-start LM with every block matrix reparameterized: `latent(k=16)`.

A low-dimensional latent z = μ + σ·ε decoded linearly into each weight.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_latent.py --workdir=workdirs/shakespeare_char_latent

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured so far: a 20-step smoke run only (train loss 4.10 at step 10 to 3.59 at step 20, on a
heavily loaded machine). The 2000-step validation loss comes from
`python -m reparam_jax.ablate experiments/reparam_comparison.py`, not yet run.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "latent(dim=16)"),)
  return c
