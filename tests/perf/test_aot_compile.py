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


def test_ideal_activations_of_a_gqa_swiglu_block_by_hand():
  from bench.aot_compile import activation_bytes, gathered_layer_bytes

  # 2 layers, width 64, 4 query heads and 2 key/value heads of width 16, gated MLP 128,
  # vocabulary 100, 3 sequences of 8 tokens per device, float32, remat=full.
  size = {"layers": 2, "width": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 128,
          "gated": True, "vocab": 100, "seq": 8}
  # One layer: 24 tokens × 4 bytes × (6·64 residual-width + 2·64 q and context + 2·32 k, v
  # + 4·128 fc_in, SiLU, fc_gate, product) + 2 score tensors 3 × 4 heads × 8 × 8 × 4 bytes.
  layer = 24 * 4 * (384 + 128 + 64 + 512) + 2 * 3 * 4 * 64 * 4
  assert layer == 110_592
  assert activation_bytes(size, 3, 1, "full", 4) == {
      "activations": 2 * 24 * 64 * 4 + layer, "logits": 24 * 100 * 4, "remat_model": "full"}
  # tensor=2 halves the heads (2 query, 1 key/value), the MLP and the vocabulary.
  layer_t2 = 24 * 4 * (384 + 64 + 32 + 256) + 2 * 3 * 2 * 64 * 4
  assert activation_bytes(size, 3, 2, "full", 4) == {
      "activations": 2 * 24 * 64 * 4 + layer_t2, "logits": 24 * 50 * 4, "remat_model": "full"}
  # dots_no_batch also keeps every layer's q, k, v, out, fc_in, fc_gate and fc_out outputs.
  dots = 24 * 4 * (64 + 2 * 32 + 64 + 2 * 128 + 64)
  assert activation_bytes(size, 3, 1, "dots_no_batch", 4)["activations"] == (
      2 * (24 * 64 * 4 + dots) + layer)

  # One layer's gathered matrices: q and out 64 × 64, k and v 64 × 32, three 64 × 128.
  assert gathered_layer_bytes(size, 1, 4) == 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
  assert gathered_layer_bytes(size, 2, 4) == 4 * (2 * 64 * 32 + 2 * 64 * 16 + 3 * 64 * 64)

  # The GPT-2 block (no kv_heads, head_dim or gated):
  # B·T·c·(6D + 4D/t + 2M/t) + 2·B·(H/t)·T²·c, and 12·D² weights a layer.
  gpt2 = {"layers": 2, "width": 64, "heads": 4, "mlp": 256, "vocab": 100, "seq": 8}
  assert activation_bytes(gpt2, 3, 2, "full", 4)["activations"] == (
      2 * 24 * 64 * 4 + 24 * 4 * (6 * 64 + 4 * 64 // 2 + 2 * 256 // 2) + 2 * 3 * 2 * 64 * 4)
  assert gathered_layer_bytes(gpt2, 1, 4) == 12 * 64 * 64 * 4


@pytest.mark.heavy
def test_aot_compile_llama_block_counts_gqa_swiglu_untied_and_adapts_fc_gate(tmp_path):
  out = tmp_path / "aot.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "bench.aot_compile", "memory",
                         "--sizes=tiny-llama", "--devices=8", "--variants=qlora",
                         "--batch_per_shard=1", "--set", "model.scan_layers=True",
                         "--set", "model.remat=full", f"--out={out}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert "error" not in row, row
  assert (row["kv_heads"], row["head_dim"], row["gated_mlp"]) == (2, 64, True)
  # Width 256, 4 heads of 64, 2 KV heads, SwiGLU 896, vocabulary 256, untied, no biases:
  # q, out 256·256; k, v 256·128; 3 MLP matrices 256·896; two RMSNorm scales per block;
  # embedding, final norm and lm_head.
  block = 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 896 + 2 * 256
  assert row["params"] == 2 * block + 256 * 256 + 256 + 256 * 256
  # Trainable: LoRA rank 16 on all 7 matrices, fc_gate included (A [in, 16] + B [16, out]).
  lora = 16 * (2 * (256 + 256) + 2 * (256 + 128) + 3 * (256 + 896))
  assert row["trainable_params"] == 2 * lora
  assert all(row[k] > 0 for k in FIELDS), row
