"""bench/gpu_train.py: its machinery on a CPU (the figures come from a GPU run)."""

import json

import pytest

from bench import gpu_train


@pytest.mark.heavy
def test_tiny_run_builds_times_and_profiles(tmp_path):
  out = tmp_path / "r.json"
  result = gpu_train.main(["--size", "tiny", "--steps", "2", "--warmup", "1",
                           "--only", "dense;identity;lowrank(r=8)", "--out", str(out),
                           "--profile_dir", str(tmp_path / "prof")])
  assert not result["errors"], result["errors"]
  v = result["variants"]
  assert set(v) == {"dense", "identity", "lowrank(r=8)"}
  # Same seed and batch: the identity interceptor changes nothing the loss sees.
  assert v["identity"]["first_loss"] == v["dense"]["first_loss"]
  assert v["lowrank(r=8)"]["state_gib"] < v["dense"]["state_gib"]
  assert all(r["wall_ms"] > 0 and 0 < r["mfu"] for r in v.values())
  assert v["dense"]["cudnn_fmha"] == 0  # no cuDNN on a CPU
  assert result["other_layout"]["dense, unrolled"]["vs_phase1_step"] > 0
  assert result["profile"]["top"] and json.loads(out.read_text())["profile"]["variant"] == "dense"


def test_trace_summary_takes_the_device_ops_line():
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "XLA Ops"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 8, "args": {"name": "Stream #1"}}]
  ops = [{"ph": "X", "pid": 2, "tid": 7, "name": "fusion.1", "dur": 300.0},
         {"ph": "X", "pid": 2, "tid": 7, "name": "gemm", "dur": 700.0},
         {"ph": "X", "pid": 2, "tid": 8, "name": "kernel", "dur": 5000.0},
         {"ph": "X", "pid": 1, "tid": 1, "name": "python", "dur": 9000.0}]
  s = gpu_train.summarize_trace({"traceEvents": meta + ops}, steps=2, top=5)
  assert s["line"] == "/device:GPU:0 / XLA Ops"
  assert [t["op"] for t in s["top"]] == ["gemm", "fusion.1"]
  assert s["top"][0]["ms_per_step"] == 0.35 and abs(s["top"][0]["share"] - 0.7) < 1e-12
