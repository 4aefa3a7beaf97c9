r"""Incremental learning, adapter arm, stage 2: task 2 (word order) as LoRA adapter B + head B.

The same recipe as sst2_lora.py on `data.name='shakespeare_order'` (Tiny
Shakespeare lines as written vs word-shuffled, reparam_jax/data/word_order.py).
It starts from the pretrained MiniLM, not from stage 1: with the base frozen the
two adapters share one bit-identical base, so adapter A + head A (stage 1's)
still give stage 1's predictions after this run.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/incremental/order_lora.py --workdir=workdirs/incremental/order_lora

Hardware: 1 CPU host (2 cores shared with other work), 1 CPU device.
Runtime: 5.2 min (one run, 2026-12-06, commit 9092cf9, box shared with other work).
Expected: word-order dev accuracy 0.875 at step 200 (one seed, 2,407 lines).
All four: experiments/results/incremental/README.md.
"""

from configs.incremental.common import budget
from configs.sst2 import minilm_lora


def get_config(arg=None):
  c = minilm_lora.get_config(arg)
  budget(c)
  c.data.name = "shakespeare_order"
  return c
