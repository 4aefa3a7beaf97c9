r"""SST-2 with LoRA (r = 8, α = 16) on every linear layer of MiniLM's blocks, base frozen.

q, k, v, the attention output and both MLP matrices of all six layers (QLoRA's
"all linear layers" choice, Dettmers et al. 2023), head trained, the rest frozen.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_lora_all.py --workdir=workdirs/sst2_minilm_lora_all

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: about 5 min (one row of experiments/sst2_pretrained.py, whose 12 runs took
60 min; experiments/results/sst2_pretrained/README.md).
Expected: dev accuracy 0.866 (seed 0) with 333K trainable parameters (1.47 %), 1.1
points below full fine-tuning's 0.877; 0.865 ± 0.001 over seeds 0–2 (commit 259f96c,
experiments/results/adapters/README.md).
"""

from configs.sst2 import minilm

BLOCK_KERNELS = minilm.BLOCK_KERNELS


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = ((BLOCK_KERNELS, "lora(rank=8, alpha=16)"),)
  c.finetune.freeze = "lora"
  c.optimizer.lr = 1e-3
  return c
