r"""Incremental learning, adapter arm, stage 1: task 1 (SST-2) as LoRA adapter A + head A.

configs/sst2/minilm_lora.py at the 200-step budget of common.py (LoRA r = 8 on
query and value, α = 16, `finetune.freeze='lora'`: only the adapters and the
classifier head train; the pretrained MiniLM, its pooler and LayerNorms
included, stays frozen).  See
docs/incremental.md and experiments/incremental.py, which runs all four stages.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/incremental/sst2_lora.py --workdir=workdirs/incremental/sst2_lora

Hardware: 1 CPU host (2 cores shared with other work), 1 CPU device.
Runtime: 6.5 min (one run, 2026-12-06, commit 9092cf9, box shared with other work).
Expected: SST-2 dev accuracy 0.807 at step 200 (one seed; 74,498 trainable parameters:
73,728 LoRA + 770 head); the same after order_lora.py trains (bit-identical logits).
All four: experiments/results/incremental/README.md.
"""

from configs.incremental.common import budget
from configs.sst2 import minilm_lora


def get_config(arg=None):
  c = minilm_lora.get_config(arg)
  budget(c)
  return c
