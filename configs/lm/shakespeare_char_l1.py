r"""Quick start + L1 on every weight matrix (no weight decay): sparsity by penalty.

`reg.l1 = 1e-5`: 1e-5·Σ|W| over all matrices (kernels and embeddings) added to
the training loss, and decoupled weight decay off so L1 is the only
regularizer.  The second command reads the sparsity it buys at a threshold
(Adam's subgradient steps leave entries hovering near zero, not at it).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char_l1.py --workdir=workdirs/shakespeare_char_l1
  python -m reparam_jax.regularizers.threshold --workdir=workdirs/shakespeare_char_l1 \
      --thresholds=1e-4,1e-3,1e-2 --per_layer=false

Hardware: 1 CPU host (2 cores, 24 GiB), 2 CPU devices as in the quick start.
Runtime: not measured (the penalty costs little: median step 70 vs 67 ms at
reg.l1=1e-6, experiments/results/regularization/README.md).
Expected: not measured yet at 2000 steps (a partial run's sparsity is in
experiments/results/quickstart/README.md).  At reg.l1=1e-6 the regularization
ablation reached validation loss 1.907 (experiments/results/regularization/table.md).
"""

from configs.lm import shakespeare_char


def get_config(arg=None):
  del arg
  c = shakespeare_char.get_config()
  c.optimizer.weight_decay = 0.0
  c.reg.l1 = 1e-5
  return c
