r"""Quick-start LM with every block matrix reparameterized: `lowrank(rank={rank})`.

W = U Vᵀ trained from scratch; the matmul is (x U) Vᵀ, the dense matrix is never
formed.  `--config.reparam.rank=R` picks the rank; `get_sweep` sweeps it.

Command:
  REPARAM_DATA_DIR=../shared/data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_lowrank.py --workdir=workdirs/shakespeare_char_lowrank

Hardware: 1 CPU host (2 cores).  Same data, model, optimizer and 2000 steps as
configs/lm/shakespeare_char.py.
Measured (seed 0, 2000 steps, loaded 2-core CPU): val loss 2.003 at rank 32
(318K stored parameters vs the dense 810K and 1.898); every rank in
experiments/results/lowrank_rank_sweep/.
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
