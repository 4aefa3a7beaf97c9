"""bench/aot_compile.py's smoke mode: the real train step compiled ahead of time, no parameters.

Three child compiles of the tiny GPT (2 layers, width 256): dense on 1 and on 8
simulated devices (fsdp), LoRA on 8.  Per-device figures from XLA's
`memory_analysis()` must show FSDP at work and LoRA's frozen base without
optimizer state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ("arguments_bytes", "outputs_bytes", "temp_bytes", "aliased_bytes", "total_bytes",
          "ideal_bytes")


def _smoke(tmp_path, *args: str) -> list[dict]:
  out = tmp_path / "aot.jsonl"
  out.unlink(missing_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "bench.aot_compile", "--smoke", *args,
                         f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert all("error" not in r for r in rows), rows
  assert "| size |" in proc.stdout  # the markdown table
  return rows


@pytest.mark.heavy
def test_aot_compile_smoke_fsdp_shrinks_state_and_lora_has_no_base_moments(tmp_path):
  (one,) = _smoke(tmp_path, "--devices=1", "--variants=dense")
  rows = {r["variant"]: r for r in _smoke(tmp_path, "--devices=8", "--variants=dense,lora")}
  dense, lora = rows["dense"], rows["lora"]
  assert (one["devices"], dense["devices"], dense["mesh"]) == (1, 8, "8x1")
  for r in (one, dense, lora):
    assert all(r[k] > 0 for k in FIELDS), r
    assert r["lower_s"] > 0 and r["compile_s"] > 0
    # Donation: the new state reuses the old state's buffers.
    assert r["aliased_bytes"] <= r["arguments_bytes"]
    assert r["total_bytes"] == (r["arguments_bytes"] + r["temp_bytes"] + r["outputs_bytes"]
                                - r["aliased_bytes"])
    assert r["ratio"] > 0

  # Dense float32 AdamW state: params × (4 param + 4 Adam mu + 4 Adam nu) + the batch.
  # (Gradients are temporaries, not arguments.)
  n = dense["params"]
  state = 12 * n
  assert dense["stored_params"] == dense["trainable_params"] == n
  assert state <= one["arguments_bytes"] < 1.02 * state
  # FSDP over 8 devices: each holds ~1/8 (small replicated leaves such as biases aside).
  assert state / 8 <= dense["arguments_bytes"] < 1.25 * state / 8
  assert one["arguments_bytes"] >= 4 * dense["arguments_bytes"]
  assert one["ideal_state_bytes"] == 16 * n  # the ideal counts gradients too (4 bytes each)

  # LoRA: the frozen base has no gradient and no Adam moments.
  assert lora["params"] == n and lora["trainable_params"] < n // 10
  assert lora["opt_state_bytes"] < dense["opt_state_bytes"] // 10
  assert lora["arguments_bytes"] < dense["arguments_bytes"]
