r"""Quick-start LM with every block matrix reparameterized: `lowrank(rank={rank})`.

W = U Vᵀ trained from scratch; the matmul is (x U) Vᵀ, the dense matrix is never
formed.  `--config.reparam.rank=R` picks the rank; `get_sweep` sweeps it.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_lowrank.py --workdir=workdirs/shakespeare_char_lowrank

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured so far: a 20-step smoke run only (train loss 4.01 at step 10 to 3.53 at step 20, on a
heavily loaded machine). The 2000-step validation loss comes from
`python -m reparam_jax.ablate experiments/reparam_comparison.py`, not yet run.
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS, "lowrank(rank={rank})"),)
  c.reparam.rank = 32
  return c


def get_sweep(hyper):
  return hyper.sweep("reparam.rank", [4, 8, 16, 32, 64])
