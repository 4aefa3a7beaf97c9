r"""Quick-start LM with every block matrix reparameterized: `lowrank(rank={rank})`.

W = U Vᵀ trained from scratch; the matmul is (x U) Vᵀ, the dense matrix is never
formed.  `--config.reparam.rank=R` picks the rank; `get_sweep` sweeps it.  Same
data, model, optimizer and 2000 steps as configs/lm/shakespeare_char.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_lowrank.py --workdir=workdirs/shakespeare_char_lowrank

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured for one run (median train step 28.3 ms at rank 32 vs
dense 43.5 ms; the six runs of the rank sweep took 9 min 23 s together,
experiments/results/lowrank_rank_sweep/README.md).
Expected: validation loss 2.003 at step 2000 at rank 32 (318K stored parameters;
dense 1.898 with 810K); every rank in experiments/results/lowrank_rank_sweep/table.md.
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
