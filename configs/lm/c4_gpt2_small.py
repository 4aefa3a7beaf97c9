r"""Pre-training a GPT-2-small-shaped decoder (124M) on C4 (English), packed first-fit.

GPT-2 small (12 layers, width 768, 12 heads, MLP 3072, learned positions, tied
embeddings) with GPT-2's byte-level BPE, context 1024, global batch 512
sequences (0.5M tokens per step), 20,000 steps (10B tokens); AdamW (lr 6e-4
→ 6e-5 cosine, 700 warm-up steps, β2 0.95, weight decay 0.1, clip 1.0), the
nanoGPT / GPT-3-small recipe.  Documents are packed first-fit with segment
ids, so attention never crosses a document (docs/data.md).  bf16 compute,
scanned layers, full remat, FSDP over every device.

Commands (data first, once; then training):
  python -m reparam_jax.prepare_data --config=configs/lm/c4_gpt2_small.py
  python -m reparam_jax.prepare_data --config=configs/lm/c4_gpt2_small.py \
      --config.data.source="tfds:c4/en:3.1.0?split=validation" --out=workdirs/c4_gpt2/validation
  python -m reparam_jax.train --config=configs/lm/c4_gpt2_small.py --workdir=workdirs/c4_gpt2_small

`data.tokenizer` is a GPT-2 tokenizer folder (Hugging Face's `gpt2`:
tokenizer.json or vocab.json + merges.txt), by default
`$REPARAM_DATA_DIR/models/gpt2`.  C4 must be prepared as ArrayRecord (`tfds
build c4/en --file_format=array_record`, a Beam job; TFDS_DATA_DIR).

Hardware: a TPU v4-32 / 8–32 H100-class GPUs (any multi-host mesh through
jax.distributed; docs/launching.md).
Runtime: not measured by this project (no C4 and no accelerator on the
development machine).
Expected: not measured here.  For scale, GPT-2 small trained this way on
OpenWebText reaches a validation loss near 3.0 after 10B tokens (nanoGPT);
C4's figures differ.
"""

import os

from reparam_jax.config.base import base_config, use_preset

CORPUS = "workdirs/c4_gpt2"


def get_config(arg=None):
  del arg
  c = base_config()
  c.task = "lm"
  c.data.source = "tfds:c4/en:3.1.0?split=train"
  c.data.tokenizer = os.path.join(os.environ.get("REPARAM_DATA_DIR", "data"), "models", "gpt2")
  c.data.prepared = f"{CORPUS}/train"
  c.data.eval_prepared = f"{CORPUS}/validation"
  c.data.packing = "first_fit"
  c.data.eval_batches = 16
  c.seq_len = 1024
  c.batch_size = 512
  c.eval_batch_size = 64
  c.num_steps = 20_000
  use_preset(c, "gpt2_small")
  c.model.vocab_size = 50304  # GPT-2's 50,257 padded to a multiple of 64 (splits over tensor)
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True
  c.model.remat = "full"
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.optimizer.lr = 6e-4
  c.optimizer.end_lr = 6e-5
  c.optimizer.warmup_steps = 700
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_norm = 1.0
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.log_every = 50
  return c
