r"""SST-2 with PiSSA-initialized LoRA on MiniLM's query and value (r = 8, α = 16).

Meng et al. (2024): A, B start at the principal singular directions of the
pretrained weight and the frozen base holds the residual, so training moves
the principal part.  Same targets, rank and α as minilm_lora.py; the learning
rate is lower (PiSSA's adapter starts at full strength: 1e-3 moved the
principal directions too far in a first try is what the paper warns of; it uses
2e-5 for LLaMA, we use 2e-4).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_pissa.py --workdir=workdirs/sst2_minilm_pissa

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime and expected dev accuracy: experiments/adapters.py's table
(experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = ((r"block_\d+/attn/(query|value)/kernel",
                      "lora(rank=8, alpha=16, init=pissa)"),)
  c.optimizer.lr = 2e-4
  c.finetune.freeze = "lora"
  return c
