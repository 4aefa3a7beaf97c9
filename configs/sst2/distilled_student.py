r"""SST-2 distilled student: the "distilled student" column of experiments/sst2.py.

configs/sst2/distill.py as is (half the teacher's layers and width, α = β =
0.5, T = 2), taught by the fine-tuned teacher of the documented pipeline at
workdirs/sst2_finetune (run pretrain_mlm.py and finetune.py first; a missing
teacher is a one-line error).  Override the teacher with
--config.distill.teacher=<classify workdir>; experiments/sst2.py does so with
the workdir of its own "encoder" run (same seed).

Command:
  REPARAM_DATA_DIR=/work/shared/data TFDS_DATA_DIR=/tmp/tfds python -m reparam_jax.train \
      --config=configs/sst2/distilled_student.py --workdir=workdirs/sst2_distilled_student
"""

from configs.sst2 import distill


def get_config(arg=None):
  return distill.get_config(arg)
