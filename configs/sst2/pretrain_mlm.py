r"""SST-2 step 1: masked-LM pre-training of a small BERT-style encoder on the SST-2 training sentences.

NSP is off: SST-2 rows are unordered phrases (see docs/tasks.md for NSP on
Tiny Shakespeare).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/pretrain_mlm.py --workdir=workdirs/sst2_mlm

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured on a quiet machine; 33 min (307 s CPU time) on the same
machine shared with other jobs (experiments/results/sst2/README.md).
Expected: dev MLM accuracy ≈ 10% at step 600 (measured 9.8%; pre-training is
deliberately short: it must fit, with fine-tuning, in ~20 CPU-minutes)
(experiments/results/sst2/README.md; docs/tasks.md).
"""

from reparam_jax.config.base import base_config
from reparam_jax.tasks.encoder import encoder_defaults


def get_config(arg=None):
  del arg
  c = encoder_defaults(base_config())
  c.task = "mlm"
  # Training phrases are short (median 10 pieces with [CLS]/[SEP], 95% ≤ 32):
  # pre-train on 32-piece windows but size the position table for fine-tuning's 64.
  c.seq_len = 32
  c.batch_size = 128
  c.num_steps = 600
  c.model.max_len = 64
  c.model.pooler = False  # MLM only: nothing would train a pooler; fine-tuning mean-pools
  c.encoder.pooling = "mean"
  c.encoder.length_buckets = (16, 24)  # + seq_len: batches padded to 16, 24 or 32 pieces
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.embed_dropout = 0.1
  c.model.residual_dropout = 0.1
  c.mlm.nsp = False  # SST-2 rows are unordered phrases: no true "next sentence"
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every = 50
  c.eval_every = 400
  c.eval_batch_size = 128
  c.checkpoint_every = 400
  return c
