r"""Instruction fine-tuning of SmolLM2-135M with QLoRA: NF4 base, LoRA r = 16 on top.

configs/lm/smollm2_lora.py (the same folder, data, adapters, frozen
embeddings and output layer, optimizer and before/after generations) with
every attention and MLP matrix stored as `q4(format=nf4, block_size=64)`
(Dettmers et al. 2023; docs/qlora.md): the pretrained weights are quantized
when the run starts, so step 0 is the quantized model; the NF4 codes stay as
they are during training and only the adapters change.

Command:
  CORPUS=/path/to/instructions REPARAM_DATA_DIR=/path/to/data python -m reparam_jax.train \
      --config=configs/lm/smollm2_qlora.py --workdir=workdirs/smollm2_qlora

Hardware: one GPU (bf16); a CPU runs it, slowly.
Runtime: not measured (no SmolLM2 folder and no accelerator on the project's machines).
Expected: not measured.  tests/tasks/test_instruction_tuning.py runs this config
at tiny size (a random 2-layer Llama folder, NF4 blocks of 16, 48 pairs packed
into 24 rows of 64 tokens, 30 steps at lr 1e-2; seed 0, measured once): the
masked train loss goes 5.70 → 5.25 (the frozen random output layer keeps the
logits small; eval 5.25) while the greedy answer goes from random bytes to "The
colour is bl."; the NF4 codes, embeddings and lm_head end bit-identical to the
folder's.
"""

from configs.lm import smollm2_lora


def get_config(arg=None):
  c = smollm2_lora.get_config(arg)
  c.reparam.rules = ((smollm2_lora.ALL_PROJECTIONS,
                      f"q4(format=nf4, block_size=64)|{smollm2_lora.LORA}"),)
  return c
