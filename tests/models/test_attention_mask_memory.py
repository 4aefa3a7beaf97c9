"""The attention mask costs no [B, H, L, L] array kept across a scanned, rematerialised stack.

A boolean mask handed to XLA's attention is broadcast, with its fill value, to the
full scores; JAX hoists those loop-invariant arrays out of the scan and keeps them
for the backward pass (2.5 GiB a device for Llama-3.1-70B at 2048 tokens,
bench/aot_compile.py).  models/block.py hands the mask as an additive bias instead.
"""

import math
import re

import jax
import jax.numpy as jnp

from reparam_jax.models import Transformer, TransformerConfig

B, L, H = 2, 24, 4  # L appears in no other dimension of the model


def test_scanned_remat_step_keeps_no_full_size_mask_outside_the_layer_loop():
  cfg = TransformerConfig(vocab_size=16, num_layers=2, num_heads=H, num_kv_heads=2,
                          embed_dim=64, mlp_dim=128, max_len=L, causal=True, norm="rms",
                          activation="silu", mlp_gated=True, rope=True, use_bias=False,
                          tie_embeddings=False, scan_layers=True, remat="full")
  model = Transformer(cfg)
  ids = jnp.zeros((B, L), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]

  def loss(p):
    return model.apply({"params": p}, ids)["logits"].mean()

  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  # Arrays of the entry computation (outside the layer loops) shaped like the scores.
  scores = [line.strip()[:160] for line in entry.splitlines()
            if re.search(rf"= \w+\[[\d,]*{L},{L}\]", line)
            and not line.lstrip().startswith(("ROOT", "%while", "%tuple"))]
  size = lambda s: math.prod(map(int, re.search(r"\[([\d,]+)\]", s).group(1).split(",")))
  full = [s for s in scores if size(s) >= B * H * L * L]
  assert not full, full
