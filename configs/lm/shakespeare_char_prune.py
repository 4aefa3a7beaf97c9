r"""Quick-start LM with gradual magnitude pruning (Zhu & Gupta 2017) of every block matrix.

Each attention and MLP kernel is `mask(...)`-ed (docs/compression.md) and pruned
from 0 to `{sparsity}` (75%) of its entries on the cubic schedule
s_t = s_f (1 − (1 − (t − 200)/1300)³) between steps 200 and 1500, every 100
steps, per layer (exact counts).  Embeddings, LayerNorms and biases stay dense.
`--config.reparam.sparsity=0.9` changes the target; `get_sweep` sweeps it.
The schedule's steps are `config.reparam.prune_begin` / `prune_end` (10% and
75% of the run); a shorter run must move them too, as
experiments/reparam_comparison.py does for its 1000 steps.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_prune.py --workdir=workdirs/shakespeare_char_prune

Hardware: 1 CPU host (2 cores), 2 CPU devices as in the quick start.
Runtime: not measured on a quiet machine (median train step 45 ms vs dense
51 ms at 1000 steps, experiments/results/reparam_comparison/table.md); 35 min on the same
machine shared with other jobs (experiments/results/reparam_comparison/README.md).
Expected: validation loss 1.953 at step 2000 (dense 1.898), the block kernels
exactly 75% zeros (experiments/results/reparam_comparison/README.md); 2.162 at
1000 steps vs dense 2.104 (experiments/results/reparam_comparison/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.reparam.rules = ((shakespeare_char.BLOCK_KERNELS,
                      "mask(sparsity={sparsity}, begin_step={prune_begin}, "
                      "end_step={prune_end}, every=100)"),)
  c.reparam.sparsity = 0.75
  c.reparam.prune_begin = 200
  c.reparam.prune_end = 1500
  return c


def get_sweep(hyper):
  return hyper.sweep("reparam.sparsity", [0.5, 0.75, 0.9, 0.95])
