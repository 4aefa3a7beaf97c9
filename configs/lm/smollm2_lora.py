r"""Instruction fine-tuning of SmolLM2-135M with LoRA (r = 16) on every attention and MLP matrix.

Starts from a Hugging Face SmolLM2-135M folder (`init_from`, default
`$REPARAM_DATA_DIR/models/SmolLM2-135M`: its architecture, weights and
tokenizer, its architecture checked against `models/presets.py`'s
`smollm2_135m`; the folder is not on the project's CPU box) and trains LoRA
adapters (r = 16, α = 32, dropout 0.05) on q, k, v, o, gate, up and down of
all 30 blocks; the base, the embeddings and the output layer stay frozen
(`finetune.freeze='lora'`, no head: PEFT's default for a causal LM).  The
data are prompt/response JSON Lines records, `$CORPUS/train.jsonl` and
`$CORPUS/val.jsonl` (fields `prompt`, `response`; the Alpaca layout with
`--config.data.prompt_field=instruction --config.data.input_field=input
--config.data.response_field=output`), packed first-fit (each example its own
segment), the loss on the response and its EOS only
(reparam_jax/data/instructions.py).  The log
holds the greedy answers to `sample.prompts` before the first step and
after the last.  docs/instruction_tuning.md.

Command:
  CORPUS=/path/to/instructions REPARAM_DATA_DIR=/path/to/data python -m reparam_jax.train \
      --config=configs/lm/smollm2_lora.py --workdir=workdirs/smollm2_lora

`CORPUS` defaults to `corpus/` (or override `data.source` / `data.eval_source`).

Hardware: one GPU (bf16); a CPU runs it, slowly.
Runtime: not measured (no SmolLM2 folder and no accelerator on the project's machines).
Expected: not measured.  tests/tasks/test_instruction_tuning.py runs this config
at tiny size (a random 2-layer Llama folder, 48 pairs packed into 24 rows of 64
tokens, 30 steps at lr 1e-2; seed 0, measured once): the masked train loss goes
5.70 → 5.24 (the frozen random output layer keeps the logits small; eval 5.24)
while the greedy answer goes from random bytes to "The colour is bl."; base,
embeddings and lm_head end bit-identical to the folder's.
"""

import os

from reparam_jax.config.base import base_config, use_preset

CORPUS = os.environ.get("CORPUS", "corpus")
# q, k, v, o and the MLP's gate, up and down of every block (Llama's names as imported).
ALL_PROJECTIONS = r"block_\d+/(attn|mlp)/\w+/kernel"
LORA = "lora(rank=16, alpha=32, dropout=0.05)"


def get_config(arg=None):
  del arg
  c = base_config()
  c.task = "lm"
  c.init_from = os.path.join("$REPARAM_DATA_DIR", "models", "SmolLM2-135M")
  # SmolLM2-135M's architecture written out (models/presets.py), so the config validates
  # without the folder; when the run starts, each field is checked against the folder's.
  use_preset(c, "smollm2_135m")
  c.model.preset = ""  # the fields stay; init_from supplies (and checks) the architecture
  c.model.dtype = "bfloat16"
  c.data.source = f"jsonl:{CORPUS}/train.jsonl"
  c.data.eval_source = f"jsonl:{CORPUS}/val.jsonl"
  # Instruction records (data/instructions.py); response_field "" would train on plain text.
  c.data.response_field = "response"
  c.data.prompt_field = "prompt"
  c.data.input_field = ""  # Alpaca: "input", joined to the prompt by a blank line
  c.data.prompt_template = "### Instruction:\n{prompt}\n\n### Response:\n"
  # Several examples a row, each attending within itself (data/instructions.py `pack`).
  c.data.packing = "first_fit"
  c.seq_len = 512
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_steps = 1000
  c.reparam.rules = ((ALL_PROJECTIONS, LORA),)
  c.finetune.freeze = "lora"
  # Adapters only: no path of a decoder LM is a "classifier", so an untied lm_head (which
  # the default head_regex would train) stays frozen with the embeddings.
  c.finetune.head_regex = "classifier"
  c.optimizer.lr = 2e-4
  c.optimizer.end_lr = 0.0
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  c.log_every = 10
  c.eval_every = 200
  c.checkpoint_every = 200
  # Greedy answers to these, in the log before the first step and after the last.
  c.sample.prompts = ("Give three tips for staying healthy.",
                      "What is the capital of France?",
                      "Write a short poem about the sea.")
  c.sample.num_tokens = 64
  return c
