"""The benchmark suite's smoke mode end to end (tiny sizes, CI)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.heavy
def test_bench_smoke_writes_every_section(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1),
             PYTHONPATH=REPO)
  # The PyTorch peer runs where torch is (the Python 3.11 test environment);
  # elsewhere the section must say it was skipped, not fail.
  has_torch = importlib.util.find_spec("torch") is not None
  env["REPARAM_TORCH_PYTHON"] = sys.executable if has_torch else str(tmp_path / "no-python")
  proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", f"--out={out}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["suite"] == "smoke" and res["machine"]["platform"] == "cpu"

  (tiny,) = res["speed"]
  assert tiny["wall_ms"] > 0 and tiny["tokens_per_sec"] > 0
  # 1 layer, width 16, mlp 64, vocab 65, T=16: N = 4·256 + 2·1024 + 1040 = 4112.
  assert tiny["model_flops_per_token"] == 6 * 4112 + 12 * 16 * 16
  assert 0 < tiny["mfu"] < 1
  assert tiny["lower_s"] > 0 and tiny["compile_s"] > 0

  phases = {r["phase"].split(" =")[0]: r for r in res["breakdown"]["phases"]}
  assert list(phases) == ["forward", "forward+backward", "train step", "backward",
                          "optimizer and rest"]
  assert phases["train step"]["share"] == 1.0
  assert all(phases[k]["wall_ms"] > 0 for k in ("forward", "forward+backward", "train step"))
  # The derived rows are differences of the measured medians.
  assert phases["backward"]["wall_ms"] == pytest.approx(
      phases["forward+backward"]["wall_ms"] - phases["forward"]["wall_ms"])

  rep = {r["variant"]: r for r in res["reparam"]}
  assert set(rep) == {"dense", "lowrank(r=4)", "lora(r=8)"}
  assert rep["dense"]["wall_ratio"] == 1.0
  assert rep["lowrank(r=4)"]["model_flops_per_token"] < rep["dense"]["model_flops_per_token"]
  assert rep["lora(r=8)"]["opt_state_ratio"] < 1.0  # frozen base weights carry no Adam state

  mem = {r["variant"]: r for r in res["memory"]}
  assert set(mem) == {"(jax runtime only)", "dense"}
  assert all(r["peak_rss_bytes"] > 10 * 2**20 for r in mem.values())
  assert mem["dense"]["peak_rss_bytes"] >= mem["(jax runtime only)"]["peak_rss_bytes"]

  fsdp = res["fsdp"]
  assert fsdp["devices"] == 8
  ideal = fsdp["param_bytes_total"] / 8
  # Every leaf is split 8 ways (training/sharding.fsdp_fill gives FSDP a dimension even
  # where the rules table gives it none: biases along `heads` and `mlp`).
  assert fsdp["param_bytes_per_device_max"] == ideal
  assert not fsdp["replicated_leaves"]

  if has_torch:
    vs = res["vs_torch"]
    # The same model on both sides: token and position tables, one block, final LN.
    assert vs["torch_params"] == vs["jax_params"] == 65 * 16 + 16 * 16 + 3280 + 32
    assert vs["steps_each"] == 4 and vs["jax_ms"] > 0 and vs["torch_ms"] > 0
    assert vs["ratio"] == pytest.approx(vs["jax_ms"] / vs["torch_ms"])
    # Generation (bench/generate_vs_torch.py): the same tokens as transformers' generate.
    gen = res["generate"]
    assert gen["token_mismatches"] == 0 and gen["batch"] == 2
    assert gen["params"] == 2 * (4 * 32 * 32 + 4 * 32 + 2 * 4 * 32 * 32 + 5 * 32 + 4 * 32) \
        + 99 * 32 + 128 * 32 + 2 * 32  # blocks + wte + wpe + ln_f
    assert gen["ratio"] == pytest.approx(gen["tokens_per_s"]["jax"] / gen["tokens_per_s"]["torch"])
    assert len(gen["call_s_all"]["jax"]) == len(gen["call_s_all"]["torch"]) == 2
  else:
    assert "vs_torch" not in res and "generate" not in res
    assert any(n.startswith("vs_torch skipped") for n in res["notes"])
    assert any(n.startswith("generate skipped") for n in res["notes"])


@pytest.mark.slow
def test_minilm_bench_times_the_same_model_on_the_same_batches(raw_data_dir, tfds_dir):
  """bench/minilm_vs_torch.py: the pretrained MiniLM's fine-tuning step here and in
  transformers (where torch is: the Python 3.11 test environment)."""
  if importlib.util.find_spec("torch") is None:
    pytest.skip("the transformers peer needs torch (the Python 3.11 test environment)")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1),
             PYTHONPATH=REPO, REPARAM_DATA_DIR=raw_data_dir, TFDS_DATA_DIR=tfds_dir)
  proc = subprocess.run([sys.executable, "-m", "bench.minilm_vs_torch", "--batches=2",
                         "--rounds=2", "--chunk=1", f"--torch_python={sys.executable}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["params"] == 22_713_986  # MiniLM (22,713,216) + a 2-class linear head
  assert out["steps_each"] == 2 and out["jax_ms"] > 0 and out["torch_ms"] > 0
  assert out["ratio"] == pytest.approx(out["jax_ms"] / out["torch_ms"])
  assert set(out["jax_compile_s"]) == set(map(str, out["padded_lengths"]))
