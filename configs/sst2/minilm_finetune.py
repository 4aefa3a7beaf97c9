r"""SST-2 by full fine-tuning of the pretrained all-MiniLM-L6-v2 (every weight trains).

The standard recipe (configs/sst2/minilm.py): AdamW lr 1e-4, 6% warm-up, linear
decay, batch 32, dynamic padding to ≤ 64 tokens, 600 steps (≈ 0.29 epoch);
`--config.num_steps=2105 --config.optimizer.warmup_steps=126` is one epoch.

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/minilm_finetune.py --workdir=workdirs/sst2_minilm_finetune

Hardware: 1 CPU host (2 cores, 24 GiB), 1 CPU device.
Runtime: 5 min 51 s (one run, quiet machine, 2026-11-25, commit 4851faa; three
evaluations and four compiled batch lengths included).
Expected: dev accuracy 0.877 at step 600 (one seed; ±1.1 points is one standard
error on 872 sentences; 0.827 at step 200, 0.880 at step 400).  One epoch:
0.901 (one seed, commit e170b6f, 21.5 min on a box shared with light work;
experiments/results/sst2_pretrained/table.md).
"""

from configs.sst2 import minilm


def get_config(arg=None):
  return minilm.get_config(arg)
