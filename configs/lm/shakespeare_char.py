r"""Quick start: a character-level GPT trained from scratch on Tiny Shakespeare.

4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps; AdamW (lr 1e-3 →
1e-4 cosine, 100 warm-up steps, β2 0.99, weight decay 0.1, clip 1.0), no dropout:
the "baby GPT" CPU setting of nanoGPT.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/lm/shakespeare_char.py --workdir=workdirs/shakespeare_char

Hardware: 1 CPU host (2 cores, 24 GiB), run as 2 CPU devices
(`perf.cpu_devices`, below): data parallel over the two cores.
Runtime: about 2 min on a quiet machine (1 min 50 s on jax 0.12), compilation
and evaluations included (experiments/results/quickstart/README.md).
Expected: validation loss ≤ 1.90 at step 2000 (`eval/loss`, exact over the whole
validation split); measured 1.898 (experiments/results/lowrank_rank_sweep/table.md,
row "dense").
"""

from reparam_jax.config.base import base_config

# Every matrix of every block: the weights the transform configs reparameterize
# (embeddings and LayerNorms stay dense).
BLOCK_KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"

def get_config(arg=None):
  del arg
  c = base_config()
  c.task = "lm"
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "char"
  c.seq_len = 64
  c.batch_size = 12
  c.num_steps = 2000
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_norm = 1.0
  c.eval_every = 500
  c.checkpoint_every = 500
  # One CPU device per core of the 2-core reference machine: the step runs
  # data parallel over the cores, 0.85x the time of one device
  # (docs/performance.md).  No effect on GPU/TPU.
  c.perf.cpu_devices = 2
  return c
