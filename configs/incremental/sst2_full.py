r"""Incremental learning, full fine-tuning arm, stage 1: SST-2, every weight trains.

configs/sst2/minilm_finetune.py (AdamW lr 1e-4, batch 32) at the 200-step budget of
common.py.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/incremental/sst2_full.py --workdir=workdirs/incremental/sst2_full

Hardware: 1 CPU host (2 cores shared with other work), 1 CPU device.
Runtime: 7.1 min (one run, 2026-12-06, commit 9092cf9, box shared with other work).
Expected: SST-2 dev accuracy 0.839 at step 200 (one seed); 0.509 (the majority-class
rate) with order_full.py's encoder and this run's head.
All four: experiments/results/incremental/README.md.
"""

from configs.incremental.common import budget
from configs.sst2 import minilm_finetune


def get_config(arg=None):
  c = minilm_finetune.get_config(arg)
  budget(c)
  return c
