"""The real trainer: one compilation of the train step, and MFU fields in its metrics."""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import run_train_subprocess, tiny_args  # noqa: E402


def test_train_step_compiles_once_and_logs_mfu(tmp_path, raw_data_dir, tfds_dir):
  # Evaluations and checkpoint saves between steps must not change the
  # state's shardings/types: any change would recompile the step.
  workdir = str(tmp_path / "run")
  args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=7, eval_every=3,
                   checkpoint_every=3, log_every=1)
  proc = run_train_subprocess(args, env={"JAX_LOG_COMPILES": "1"}, devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  log = proc.stdout + proc.stderr
  # jax's own log line (`...pxla:Compiling jit(NAME) with ...`; older jax wrote
  # `pxla:LINE: Compiling NAME`), one per compilation.
  compiles = re.findall(r"pxla:(?:\d+:)?\s*Compiling (?:jit\()?(\w+)", log)
  assert compiles.count("train_step") == 1, compiles

  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in records if "train/mfu" in r]
  assert len(train) == 7
  # Hand count for the tiny LM (L=1, D=16, M=32, V=65 characters, T=16):
  # N = 4·16² + 2·16·32 + 16·65 = 3088; 6N + 12·1·16·16 = 18528 + 3072.
  assert {r["train/model_flops_per_token"] for r in train} == {21600.0}
  for r in train:
    expected = 21600 * r["train/tokens_per_sec_per_device"] / 1e12
    assert abs(r["train/tflops_per_device"] - expected) <= 1e-9 + 1e-6 * expected
    assert 0.0 < r["train/mfu"] < 1.0
  assert "model FLOPs/token 21,600" in proc.stdout
