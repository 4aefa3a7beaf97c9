r"""SST-2 distilled student: the "distilled student" column of experiments/sst2.py.

configs/sst2/distill.py as is (half the teacher's layers and width, α = β =
0.5, T = 2), taught by the fine-tuned teacher of the documented pipeline at
workdirs/sst2_finetune (run pretrain_mlm.py and finetune.py first; a missing
teacher is a one-line error).  Override the teacher with
--config.distill.teacher=<classify workdir>; experiments/sst2.py does so with
the workdir of its own "encoder" run (same seed).

Command:
  REPARAM_DATA_DIR=/path/to/raw_data python -m reparam_jax.train \
      --config=configs/sst2/distilled_student.py --workdir=workdirs/sst2_distilled_student

Hardware: 1 CPU host (2 cores, 24 GiB).
Runtime: not measured for one run; the three runs of experiments/sst2.py took
3 min 36 s together on a quiet machine (experiments/results/sst2/README.md).
Expected: dev accuracy ≈ 80%, level with the teacher: 0.808 taught by the
ablation's "encoder" run (0.795), 567K stored parameters
(experiments/results/sst2/table.md).
"""

from configs.sst2 import distill


def get_config(arg=None):
  return distill.get_config(arg)
