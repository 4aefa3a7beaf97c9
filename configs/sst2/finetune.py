r"""SST-2 step 2: fine-tune the pre-trained encoder on the sentiment labels.

Command (after configs/sst2/pretrain_mlm.py wrote workdirs/sst2_mlm):
  REPARAM_DATA_DIR=/work/shared/data TFDS_DATA_DIR=/tmp/tfds python -m reparam_jax.train \
      --config=configs/sst2/finetune.py --workdir=workdirs/sst2_finetune \
      --config.init_from=workdirs/sst2_mlm

MEASURED: see below.
"""

from reparam_jax.config_base import base_config
from reparam_jax.tasks.encoder import encoder_defaults


def get_config(arg=None):
  del arg
  c = encoder_defaults(base_config())
  c.task = "classify"
  c.init_from = "workdirs/sst2_mlm"
  c.seq_len = 64
  c.batch_size = 64
  c.num_steps = 1000  # ≈ 1 epoch of the 67,349 training phrases
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.embed_dropout = 0.1
  c.model.residual_dropout = 0.1
  c.model.pooler = False
  c.encoder.pooling = "mean"
  c.encoder.length_buckets = (16, 32)  # + seq_len: batches padded to 16, 32 or 64 pieces
  c.encoder.classifier_dropout = 0.1
  c.optimizer.lr = 3e-4
  c.optimizer.end_lr = 1e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every = 50
  c.eval_every = 500
  c.eval_batch_size = 128
  c.checkpoint_every = 500
  return c
