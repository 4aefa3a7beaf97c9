"""What importing the library pulls in: TFDS only when a dataset is read.

The train step, the benchmarks and the model code run where TFDS is not
installed (a GPU machine's own Python, say); data/tfds_builders.py imports
the builders (and TFDS) inside `load_builder`.
"""

import subprocess
import sys

_CHECK = ("import sys; import bench.lm_step, reparam_jax.train, reparam_jax.tasks; "
          "print('tensorflow_datasets' in sys.modules)")


def test_importing_the_trainer_and_tasks_does_not_import_tfds():
  out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "False", out.stderr[-2000:]
