r"""Continued pre-training of a pretrained model on your own JSON Lines corpus.

Starts from the checkpoint or Hugging Face folder in `init_from` (its
architecture and tokenizer: a GPT-2 folder, or a run of this project) and
trains on `$CORPUS/train/*.jsonl` (a "text" field per line) with the
model's own tokenizer, documents concatenated and cut (nanoGPT), held-out
loss and bits per byte on `$CORPUS/val/*.jsonl`.  A low, short learning
rate (1e-4 → 1e-5, 100 warm-up steps), the usual for continued pre-training.

Commands:
  python -m reparam_jax.prepare_data --config=configs/lm/continue_jsonl.py
  python -m reparam_jax.prepare_data --config=configs/lm/continue_jsonl.py \
      --config.data.source="jsonl:$CORPUS/val/*.jsonl" --out=workdirs/continue/val
  python -m reparam_jax.train --config=configs/lm/continue_jsonl.py \
      --config.init_from=/path/to/gpt2 --workdir=workdirs/continue_gpt2

`CORPUS` defaults to `corpus/` (set the environment variable or override
`data.source`); `init_from` defaults to `$REPARAM_DATA_DIR/models/gpt2`.
prepare_data takes the tokenizer of `init_from`.

Hardware: one GPU or TPU host for GPT-2 small; a CPU runs it slowly.
Runtime: depends on the corpus (not measured by this project).
Expected: not measured by this project (tests/tasks/test_lm_corpus.py runs
the same path, prepare_data then training on the shards, at tiny size).
"""

import os

from reparam_jax.config.base import base_config

CORPUS = os.environ.get("CORPUS", "corpus")


def get_config(arg=None):
  del arg
  c = base_config()
  c.task = "lm"
  c.init_from = os.path.join(os.environ.get("REPARAM_DATA_DIR", "data"), "models", "gpt2")
  c.data.source = f"jsonl:{CORPUS}/train/*.jsonl"
  c.data.prepared = "workdirs/continue/train"
  c.data.eval_prepared = "workdirs/continue/val"
  c.data.packing = "concat"
  c.seq_len = 1024
  c.batch_size = 32
  c.num_steps = 2000
  c.model.dtype = "bfloat16"
  c.optimizer.lr = 1e-4
  c.optimizer.end_lr = 1e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_norm = 1.0
  c.eval_every = 200
  c.checkpoint_every = 200
  return c
