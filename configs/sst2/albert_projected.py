r"""SST-2 with an ALBERT-style encoder: factorised embedding (E=32) and one shared block.

The "ALBERT-projected" column of experiments/sst2.py: exactly the "encoder"
column (configs/sst2/encoder.py: task, data, depth, width, schedule, trained
from scratch on the labels) plus the projection options of
`TransformerConfig` — token/position/segment tables are [V, 32] followed by
`embed/projection` (32 → 128), and both layers apply one `block_shared`.
Same compute per step, fewer stored parameters.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/albert_projected.py --workdir=workdirs/sst2_albert_projected

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured for one run; the three runs of experiments/sst2.py took
3 min 36 s together on a quiet machine (experiments/results/sst2/README.md).
Expected: dev accuracy ≈ 80% (measured 0.817, 461K stored parameters vs the
encoder's 1.43M; experiments/results/sst2/table.md).
"""

from configs.sst2 import encoder


def get_config(arg=None):
  del arg
  c = encoder.get_config()  # the "encoder" column: task, data, depth, width, schedule
  c.model.embed_proj_dim = 32  # ALBERT's factorised embedding: V×32 then 32→128
  c.model.share_layers = True  # ALBERT's cross-layer sharing: one block, applied twice
  return c
