r"""SST-2 with an ALBERT-style encoder: factorised embedding (E=32) and one shared block.

The "ALBERT-projected" column of experiments/sst2.py: exactly the "encoder"
column (configs/sst2/encoder.py: task, data, depth, width, schedule, trained
from scratch on the labels) plus the projection options of
`TransformerConfig` — token/position/segment tables are [V, 32] followed by
`embed/projection` (32 → 128), and both layers apply one `block_shared`.
Same compute per step, fewer stored parameters.

Command:
  REPARAM_DATA_DIR=/work/shared/data TFDS_DATA_DIR=/tmp/tfds python -m reparam_jax.train \
      --config=configs/sst2/albert_projected.py --workdir=workdirs/sst2_albert_projected

MEASURED: see below.
"""

from reparam_jax.config_base import base_config
from reparam_jax.tasks.encoder import encoder_defaults

MEASURED = "filled in by the measured run"


def get_config(arg=None):
  del arg
  c = encoder_defaults(base_config())
  c.task = "classify"
  c.init_from = ""
  c.seq_len = 64
  c.batch_size = 64
  c.num_steps = 1000
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.embed_proj_dim = 32  # ALBERT's factorised embedding: V×32 then 32→128
  c.model.share_layers = True  # ALBERT's cross-layer sharing: one block, applied twice
  c.model.embed_dropout = 0.1
  c.model.residual_dropout = 0.1
  c.model.pooler = False
  c.encoder.pooling = "mean"
  c.encoder.classifier_dropout = 0.1
  c.encoder.length_buckets = (16, 32)
  c.optimizer.lr = 1e-3  # from scratch, as configs/sst2/encoder.py
  c.optimizer.end_lr = 1e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every = 50
  c.eval_every = 500
  c.eval_batch_size = 128
  c.checkpoint_every = 500
  return c
