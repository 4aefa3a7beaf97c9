r"""Pre-training a 350M decoder (GPT-2-medium shape) on C4 (English), packed first-fit.

configs/lm/c4_gpt2_small.py with GPT-2 medium's shape (24 layers, width 1024,
16 heads, MLP 4096: 355M parameters) and lr 3e-4 → 3e-5 (GPT-3 medium's);
the same data, tokenizer, packing, batch (0.5M tokens) and 20,000 steps.
FSDP over every device; on 64+ devices, set --config.mesh.tensor=4.

Commands (the data of configs/lm/c4_gpt2_small.py, prepared once, serves both):
  python -m reparam_jax.train --config=configs/lm/c4_350m.py --workdir=workdirs/c4_350m

Hardware: a TPU v4-64 / 32 H100-class GPUs.
Runtime: not measured by this project (no C4 and no accelerator here).
Expected: not measured here.
"""

from configs.lm import c4_gpt2_small
from reparam_jax.config.base import use_preset


def get_config(arg=None):
  c = c4_gpt2_small.get_config(arg)
  use_preset(c, "gpt2_medium")
  c.model.vocab_size = 50304  # padded, as in c4_gpt2_small
  c.optimizer.lr = 3e-4
  c.optimizer.end_lr = 3e-5
  return c
