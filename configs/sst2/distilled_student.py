r"""SST-2 distilled student: the "distilled student" column of experiments/sst2.py.

configs/sst2/distill.py as is (half the teacher's layers and width, α = β =
0.5, T = 2), taught by the fine-tuned teacher of the documented pipeline at
workdirs/sst2_finetune (run pretrain_mlm.py and finetune.py first; a missing
teacher is a one-line error).  Override the teacher with
--config.distill.teacher=<classify workdir>.

Command:
  REPARAM_DATA_DIR=/work/shared/data TFDS_DATA_DIR=/tmp/tfds python -m reparam_jax.train \
      --config=configs/sst2/distilled_student.py --workdir=workdirs/sst2_distilled_student
"""

import importlib.util
import os


def get_config(arg=None):
  # The same settings as distill.py (config files are loaded by path, not as a package).
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distill.py")
  spec = importlib.util.spec_from_file_location("sst2_distill_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
