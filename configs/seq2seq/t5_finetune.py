r"""Span-corruption training continued from a pretrained T5, in its own vocabulary.

The model and tokenizer are those of `init_from`: a Hugging Face T5 folder
(`T5ForConditionalGeneration`, v1.0 or v1.1; safetensors or pytorch_model.bin,
`spiece.model` or `tokenizer.json`) or its `convert_hf` output.  Spans are hidden
behind the checkpoint's own sentinels (`<extra_id_0>` is T5's id 32099), so the
pretrained embeddings and output layer keep their meaning
(reparam_jax/tasks/seq2seq.py `Vocabulary`).  Nothing here restates the
architecture (`architecture_from_checkpoint`).  T5's own recipe for the rest:
inputs of 512 tokens, 15 % noise in spans of mean length 3 (114 targets), no
label smoothing; AdamW at a constant 1e-4 instead of Adafactor.

Commands (t5-small from the Hub, read offline from a folder):
  python -m reparam_jax.convert_hf --from=/path/to/t5-small --to=workdirs/t5_small
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/seq2seq/t5_finetune.py --workdir=workdirs/t5_finetune
  python -m reparam_jax.sample --workdir=workdirs/t5_finetune --temperature=0 \
      --prompt="ROMEO: <extra_id_0> thee, my <extra_id_1>."

`--config.init_from=/path/to/t5-small` reads the Hugging Face folder directly.

Hardware: one GPU or TPU host for t5-small (60M parameters); a CPU runs it slowly.
Runtime and expected metric: not measured by this project (no pretrained T5 is on
its machines); tests/tasks/test_t5_pretrained.py runs the same path on a tiny
random T5 folder with a SentencePiece tokenizer.
"""

from reparam_jax.config.base import base_config
from reparam_jax.hf.pretrained import architecture_from_checkpoint
from reparam_jax.tasks.seq2seq import seq2seq_defaults


def get_config(arg=None):
  del arg
  c = seq2seq_defaults(base_config())
  c.init_from = "workdirs/t5_small"
  architecture_from_checkpoint(c)  # model.* from the checkpoint
  c.data.name = "tiny_shakespeare"  # tokenized with init_from's tokenizer
  c.seq_len = 512
  c.batch_size = 32
  c.num_steps = 2000
  c.seq2seq.label_smoothing = 0.0
  c.optimizer.lr = 1e-4
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  c.eval_every = 500
  c.checkpoint_every = 500
  c.eval_batch_size = 64
  return c
