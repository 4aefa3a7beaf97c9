"""bench/generate_vs_torch.py --full and bench/membw.py at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bench import membw
from tests.helpers import REPO, xla_flags


def test_membw_reads_the_whole_array_and_reports_each_kernel():
  out = membw.measure(gib=1 / 64, rounds=2)
  assert out["array_bytes"] == 2**30 // 64
  assert set(out["gbps"]) == {"numpy_sum", f"numpy_sum_{out['threads']}", "jax_sum"}
  assert all(v > 0 for v in out["gbps"].values())
  assert out["best_gbps"] == out["gbps"][out["best"]] == max(out["gbps"].values())


@pytest.mark.peer
def test_full_generation_table_at_tiny_size(tmp_path):
  """Every row of `--full` (greedy and sampled, float32 and int8) against transformers
  with its static cache: greedy float32 tokens equal transformers', int8 greedy tokens
  equal those of the dequantized float32 model, and the bytes per token add up."""
  if importlib.util.find_spec("torch") is None:
    pytest.skip("the transformers peer needs torch (the Python 3.11 test environment)")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1), PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "-m", "bench.generate_vs_torch", "--size=tiny", "--full", "--rounds=2",
       "--new=4", "--prompt=8", "--batches=1,2", "--int8_batches=1", "--bandwidth_gib=0.01",
       "--cache=static", f"--torch_python={sys.executable}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = {(r["weights"], r["batch"], r["mode"]): r for r in out["rows"]}
  assert set(rows) == {(w, b, m) for w, b in (("float32", 1), ("float32", 2), ("int8", 1))
                       for m in ("greedy", "sample")}
  for (weights, batch, mode), row in rows.items():
    assert len(row["call_s_all"]["jax"]) == len(row["call_s_all"]["torch"]) == 2
    assert row["ratio"] == pytest.approx(row["tokens_per_s"]["jax"] / row["tokens_per_s"]["torch"])
    assert (mode == "greedy") == ("mismatches" in row)
    assert row.get("mismatches", 0) == 0
    # 2 layers × (k, v) × 32 wide × 4 bytes a cache slot; JAX attends its 8 + 4 slots,
    # transformers' static cache its 8 + 4 as well.
    kv = 2 * 2 * 32 * 4 * batch * 12
    assert row["bytes_per_token"]["jax"] * batch == out["weight_bytes"][weights] + kv
    assert row["bytes_per_token"]["torch"] * batch == out["weight_bytes"]["float32"] + kv
    assert 0 < row["fraction_of_bandwidth"]["jax"]
  # The position table counts one row; int8 block matrices a byte a weight + a scale a column.
  assert out["weight_bytes"]["float32"] == 4 * (out["params"] - 128 * 32 + 32)
  per_layer = 3 * (4 * 32 * 32 + 2 * 32 * 128) - 4 * (4 * 32 + 128 + 32)  # q k v out, fc_in/out
  assert out["weight_bytes"]["float32"] - out["weight_bytes"]["int8"] == 2 * per_layer
  assert out["cpu"] and out["commit"] and out["jax"] and out["torch_cache"] == "static"
  assert "transformers" in proc.stdout.splitlines()[0]
