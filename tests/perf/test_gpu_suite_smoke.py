"""bench/gpu_suite.py: the whole GPU run at tiny sizes on a CPU, and its bookkeeping."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from bench import gpu_suite
from tests.helpers import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Written out, not read from gpu_suite.PARTS: a part dropped there must fail here.
TRAINING_PARTS = ("dense_gpt2_medium", "identity", "lowrank", "lora", "dense_llama3_2_1b",
                  "dense_gpt2_medium_unrolled")
RATIO_PARTS = ("identity", "lowrank", "lora", "generation")
EVERY_PART = ("dense_gpt2_medium", "identity", "lowrank", "lora", "dense_llama3_2_1b",
              "generation", "dense_gpt2_medium_unrolled")


def _positive(x: object) -> bool:
  return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.heavy
def test_smoke_run_measures_every_part(tmp_path):
  out = tmp_path / "gpu_suite.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1), PYTHONPATH=REPO)
  # The generation part's PyTorch peer runs where torch is (the Python 3.11 test
  # environment); elsewhere the part must say it was skipped, and why.
  has_torch = importlib.util.find_spec("torch") is not None
  env["REPARAM_TORCH_PYTHON"] = sys.executable if has_torch else str(tmp_path / "no-python")
  proc = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--smoke", f"--out={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["machine"]["platform"] == "cpu" and res["machine"]["jax"] and res["machine"]["commit"]

  parts = res["parts"]
  assert tuple(parts) == EVERY_PART  # every part, in the documented order
  for name, part in parts.items():
    if name == "generation" and not has_torch:
      assert part["status"] == "skipped" and "torch" in part["reason"], part
      continue
    assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
    figures = ("value", "tokens_per_sec")
    figures += ("mfu", "step_ms", "compile_s") if name in TRAINING_PARTS else ()
    figures += ("ratio",) if name in RATIO_PARTS else ()
    for key in figures:
      assert _positive(part[key]), (name, key, part.get(key))
    assert part["goal_met"] in (True, False), (name, part["goal_met"])
    assert part["wall_s"] > 0 and part["goal"] == gpu_suite.GOALS[name][3]

  # The sweep kept the fastest point that ran, and the ratio parts ran at it.
  dense = parts["dense_gpt2_medium"]
  ran = [r for r in dense["sweep"] if r["status"] == "ok"]
  assert dense["tokens_per_sec"] == max(r["tokens_per_sec"] for r in ran)
  assert all(parts[p]["point"] == dense["best"] for p in ("identity", "lowrank", "lora"))
  # Same seed and batch: the identity interceptor changes nothing the loss sees.
  assert parts["identity"]["first_loss"] == parts["identity"]["dense_first_loss"]
  assert parts["lowrank"]["state_gib"] < parts["lowrank"]["dense_state_gib"]
  assert parts["dense_gpt2_medium_unrolled"]["point"].endswith("unrolled")
  assert "llama" in parts["dense_llama3_2_1b"]["size"]
  if has_torch:
    (call,) = parts["generation"]["calls"]
    assert call["token_mismatches"] == 0 and "--cache static" in call["command"]
  # The closing table names the machine and has a row per part.
  assert f"commit {res['machine']['commit']}" in proc.stdout
  assert all(f"| {p} |" in proc.stdout for p in EVERY_PART)


def test_best_fit_takes_the_fastest_point_that_ran():
  rows = [{"point": "B8", "tokens_per_sec": 100.0}, {"point": "B16", "tokens_per_sec": 150.0},
          {"point": "B32", "status": "does not fit: ..."}, {"point": "B64", "status": "failed"}]
  assert gpu_suite.best_fit(rows)["point"] == "B16"
  assert gpu_suite.best_fit(rows[2:]) is None


def test_goals_compare_each_way():
  assert gpu_suite.goal_met("dense_gpt2_medium", 0.45) and not gpu_suite.goal_met(
      "dense_gpt2_medium", 0.319)
  assert gpu_suite.goal_met("lora", 0.75) and not gpu_suite.goal_met("lora", 0.8)
  assert gpu_suite.goal_met("identity", float("nan")) is None


def test_a_failed_or_late_part_is_recorded_and_the_file_kept(tmp_path):
  out = str(tmp_path / "r.json")
  profile = dataclasses.replace(gpu_suite.SMOKE,
                                min_s={**gpu_suite.SMOKE.min_s, "generation": 1e6})
  suite = gpu_suite.Suite(profile, out, None, budget_s=100.0, commit="abc1234")

  def broken(deadline):
    raise ValueError("out of memory")

  suite.run_part("identity", broken)
  saved = json.loads(pathlib.Path(out).read_text())["parts"]
  assert saved["identity"]["status"] == "failed" and "out of memory" in saved["identity"]["error"]
  suite.run_part("lora", lambda deadline: {"ratio": 0.5})
  suite.run_part("generation", broken)  # needs more than the budget has: not started
  saved = json.loads(pathlib.Path(out).read_text())["parts"]
  assert saved["lora"]["status"] == "ok" and saved["lora"]["goal_met"] is True
  assert saved["generation"]["status"] == "skipped" and "budget" in saved["generation"]["reason"]
  assert list(saved) == ["identity", "lora", "generation"]


def test_a_step_whose_temporaries_exceed_free_memory_is_not_run(tmp_path, monkeypatch):
  # As on a GPU whose allocator has nothing left beside the state.
  monkeypatch.setattr(gpu_suite.gpu_train, "free_device_bytes", lambda device: 0)
  suite = gpu_suite.Suite(gpu_suite.SMOKE, str(tmp_path / "r.json"), None, 100.0, "abc1234")
  rows, runner = suite.sweep("tiny", ({"batch_size": 4, "model.remat": "none"},), math.inf,
                             keep_best=True)
  (row,) = rows
  assert row["status"].startswith("does not fit: the step needs") and runner is None
  assert "tokens_per_sec" not in row and gpu_suite.best_fit(rows) is None
