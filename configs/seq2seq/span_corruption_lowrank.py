r"""configs/seq2seq/span_corruption.py with every block matrix low-rank: W = U Vᵀ, rank {rank}.

Seed 002 §5.2's low-rank linear layer (in → r → out) on every self-attention,
cross-attention and MLP matrix of both stacks; embeddings, norms and the
output layer stay dense.  `--config.reparam.rank=R` picks the rank.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/seq2seq/span_corruption_lowrank.py --workdir=workdirs/span_lowrank

Hardware: 1 CPU host (2 cores, 24 GiB), run as 2 CPU devices.
Runtime and expected metric: experiments/results/seq2seq_lowrank/README.md (rows "rank r").
"""

from configs.seq2seq import span_corruption


def get_config(arg=None):
  del arg
  c = span_corruption.get_config()
  c.reparam.rules = ((span_corruption.BLOCK_KERNELS, "lowrank(rank={rank})"),)
  c.reparam.rank = 16
  return c


def get_sweep(hyper):
  return hyper.sweep("reparam.rank", [4, 8, 16, 32])
