r"""What the configs/incremental/ stages share: a 200-step budget (not an experiment alone).

200 steps × batch 32 (≈ 0.1 epoch of SST-2), a third of configs/sst2/minilm_*.py's
600: on the shared 2-core CPU box a full fine-tuning step of MiniLM took 1.4 to
3 s with other work running, so four 600-step runs did not fit the time the
experiment had.  Warm-up stays 6% of the steps; the linear decay still ends at
0 on the last step.  `get_config` (full fine-tuning of MiniLM on SST-2 at this
budget) is what sst2_full.py runs; see experiments/incremental.py.
"""

import ml_collections

from configs.sst2 import minilm_finetune

STEPS = 200
ROOT = "workdirs/incremental"  # experiments/incremental.py --workdir


def budget(c: ml_collections.ConfigDict) -> None:
  c.num_steps = STEPS
  c.optimizer.warmup_steps = 12  # 6% of 200
  c.eval_every = STEPS
  c.checkpoint_every = STEPS


def get_config(arg=None):
  c = minilm_finetune.get_config(arg)
  budget(c)
  return c
