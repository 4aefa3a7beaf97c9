r"""Incremental learning, full fine-tuning arm, stage 2: word order from the SST-2 model.

Continues sst2_full.py's run on `data.name='shakespeare_order'` with the same
recipe, every weight training.  `init_from` is that run's workdir: its encoder
(and, as the names and shapes match, its 2-way classifier head as the starting
head) and its tokenizer.  Task 1 is then scored with this run's encoder and
stage 1's head (experiments/incremental.py).  The architecture is MiniLM's,
read from the pretrained folder as in configs/sst2/minilm.py.

Command (after sst2_full):
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/incremental/order_full.py --workdir=workdirs/incremental/order_full \
      --config.init_from=workdirs/incremental/sst2_full

Hardware: 1 CPU host (2 cores shared with other work), 1 CPU device.
Runtime: 10.3 min (one run, 2026-12-06, commit 9092cf9, box shared with other work).
Expected: word-order dev accuracy 0.899 at step 200 (one seed).
All four: experiments/results/incremental/README.md.
"""

from configs.incremental.common import ROOT, budget
from configs.sst2 import minilm_finetune

STAGE1 = f"{ROOT}/sst2_full"


def get_config(arg=None):
  c = minilm_finetune.get_config(arg)
  budget(c)
  c.data.name = "shakespeare_order"
  c.init_from = STAGE1
  return c
