r"""SST-2, BERT-style encoder trained from scratch on the labels: the "encoder" column of
experiments/sst2.py.

The architecture, data and schedule of configs/sst2/finetune.py, without the
MLM initialisation (so the ablation's variants are self-contained and
comparable with configs/sst2/albert_projected.py, which also trains from
scratch) and with the from-scratch learning rate 1e-3.  For the pre-trained
pipeline use pretrain_mlm.py → finetune.py instead.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/encoder.py --workdir=workdirs/sst2_encoder

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured for one run; the three runs of experiments/sst2.py took
3 min 36 s together on a quiet machine (experiments/results/sst2/README.md).
Expected: dev accuracy ≈ 80% (±1.3%): measured 0.795, 1.43M stored parameters
(experiments/results/sst2/table.md).
"""

from reparam_jax.config.base import base_config
from reparam_jax.tasks.encoder import encoder_defaults


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
  c.model.embed_dropout = 0.1
  c.model.residual_dropout = 0.1
  c.model.pooler = False
  c.encoder.pooling = "mean"
  c.encoder.classifier_dropout = 0.1
  c.encoder.length_buckets = (16, 32)
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every = 50
  c.eval_every = 500
  c.eval_batch_size = 128
  c.checkpoint_every = 500
  return c
