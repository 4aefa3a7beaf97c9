r"""T5-style encoder–decoder pre-trained by span corruption on Tiny Shakespeare (characters).

3 encoder + 3 decoder blocks (T5 v1.1 layout: pre-RMSNorm, no biases,
relative position buckets, gated GELU, untied output layer), width 128,
4 heads; inputs of 64 characters with 15 % of them hidden in spans of mean
length 3 (14 target tokens); label smoothing 0.1; AdamW, batch 32, 4000 steps.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/seq2seq/span_corruption.py --workdir=workdirs/span_corruption
  python -m reparam_jax.sample --workdir=workdirs/span_corruption --beams=4 \
      --prompt="ROMEO: <extra_id_0> thee, my <extra_id_1>."

Hardware: 1 CPU host (2 cores, 24 GiB), run as 2 CPU devices.
Runtime and expected metric: see experiments/results/seq2seq_lowrank/README.md
(row "dense").
"""

from reparam_jax.config.base import base_config
from reparam_jax.tasks.seq2seq import seq2seq_defaults

# Every matrix of both stacks: self-attention, cross-attention and MLP.
BLOCK_KERNELS = r"(encoder|decoder)/block_\d+/(attn|cross_attn|mlp)/\w+/kernel"


def get_config(arg=None):
  del arg
  c = seq2seq_defaults(base_config())
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "char"
  c.seq_len = 64  # encoder inputs; the targets' length follows (14)
  c.batch_size = 32
  c.num_steps = 4000
  c.model.num_layers = 3
  c.model.num_decoder_layers = 3
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 256
  c.optimizer.lr = 2e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.eval_batch_size = 256
  c.perf.cpu_devices = 2
  return c
