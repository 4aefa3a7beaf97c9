r"""SST-2 with LoRA on MiniLM's attention query and value (r = 8, α = 16), base frozen.

Hu et al. (2021)'s GLUE setting: adapters on W_q and W_v of every layer, the
classifier head trained, everything else frozen (`finetune.freeze='lora'`).
The dense pretrained weights become LoRA's frozen W₀ when the run starts
(`Reparam.adopt_dense`); B = 0, so step 0 is the pretrained model. LoRA
trains with a larger learning rate than full fine-tuning (1e-3).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_lora.py --workdir=workdirs/sst2_minilm_lora

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime: 4 min 57 s (one run, quiet machine, 2026-11-25, commit 4851faa).
Expected: dev accuracy 0.852 at step 600 with 74,498 trainable parameters (0.33%),
seed 0; 0.849 ± 0.009 over seeds 0–2 (commit 259f96c,
experiments/results/adapters/README.md), vs 0.877 for minilm_finetune.py: 2.5
points behind, so the issue's goal (within 1.5) is not met at this budget and lr.
"""

from configs.sst2 import minilm

QV = r"block_\d+/attn/(query|value)/kernel"  # the attention query and value of every block


def get_config(arg=None):
  c = minilm.get_config(arg)
  c.reparam.rules = ((QV, "lora(rank=8, alpha=16)"),)
  c.finetune.freeze = "lora"
  c.optimizer.lr = 1e-3
  return c
