"""The benches' peer client: found by name, and light enough for a machine without TFDS."""

from __future__ import annotations

import os
import subprocess
import sys

from bench import peer_process
from tests.helpers import REPO


def test_torch_python_accepts_a_path_or_a_name_on_path():
  assert peer_process.torch_python(sys.executable) == sys.executable
  name = os.path.basename(sys.executable)  # e.g. "python": resolved through PATH
  env_path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
  old = os.environ["PATH"]
  try:
    os.environ["PATH"] = env_path
    assert peer_process.torch_python(name) == os.path.join(os.path.dirname(sys.executable), name)
  finally:
    os.environ["PATH"] = old
  assert peer_process.torch_python("/no/such/python") is None


def test_generation_bench_imports_neither_tfds_nor_the_trainer():
  # The device machines hold jax, flax and torch but not TFDS: the generation
  # bench must start there (docs/performance.md, "On a GPU").
  code = ("import sys, bench.generate_vs_torch; "
          "bad = {'tensorflow_datasets', 'reparam_jax.training.loop'} & set(sys.modules); "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
