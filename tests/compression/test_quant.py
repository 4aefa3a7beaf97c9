"""Quantization: STE gradients, LSQ scale gradient, int8 round trip, storage dtype, act quant."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reparam_jax import reparam
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.transforms.quant import (
  dequantize,
  fake_quant,
  fake_quant_tokens,
  qmax,
  quantize,
)


@pytest.mark.parametrize("bits", [8, 4])
def test_ste_gradient_is_identity_inside_the_clip_range_and_zero_outside(bits):
  w = jax.random.normal(jax.random.key(0), (32, 8))
  scale = jnp.full((8,), 0.5 / qmax(bits))  # range ±0.5: many entries clipped
  g = jax.grad(lambda w: jnp.sum(fake_quant(w, scale, bits) * jnp.arange(8.0)))(w)
  inside = np.abs(np.asarray(w)) <= 0.5
  assert 0.1 < inside.mean() < 0.9
  np.testing.assert_array_equal(np.asarray(g)[inside], np.broadcast_to(np.arange(8.0), w.shape)[inside])
  np.testing.assert_array_equal(np.asarray(g)[~inside], 0.0)


def test_ste_gradient_is_one_on_the_clip_bound():
  """The largest |w| sits exactly on q·s (max scaling): it is inside, gradient 1 not ½."""
  bits = 8
  scale = jnp.full((2,), 0.25)
  w = jnp.asarray([[qmax(bits) * 0.25, -qmax(bits) * 0.25], [0.1, 2 * qmax(bits) * 0.25]])
  g = jax.grad(lambda w: jnp.sum(fake_quant(w, scale, bits)))(w)
  np.testing.assert_array_equal(np.asarray(g), [[1.0, 1.0], [1.0, 0.0]])
  gs = jax.grad(lambda s: jnp.sum(fake_quant(w, s, bits)))(scale)
  # LSQ: round(x) − x inside (0 on the bound, −0.4 for x = 0.4), sign(w)·q when clipped.
  np.testing.assert_allclose(np.asarray(gs), [-0.4, qmax(bits)], atol=1e-5)


def test_lsq_scale_gradient():
  node = reparam.parse_spec("quant(bits=4, scale=learned)")
  w = jax.random.normal(jax.random.key(1), (16, 3))
  theta = node.from_dense(w)
  theta["scale"] = theta["scale"] * 0.5  # clip some entries
  gs = jax.grad(lambda t: jnp.sum(node.apply(t)))(theta)["scale"]
  s = np.asarray(theta["scale"])
  x = np.asarray(w) / s
  q = qmax(4)
  per = np.where(np.abs(x) <= q, np.round(x) - x, np.sign(x) * q)
  want = per.sum(0) / np.sqrt(16 * q)
  np.testing.assert_allclose(np.asarray(gs), want, rtol=1e-4, atol=1e-5)
  gw = jax.grad(lambda t: jnp.sum(node.apply(t)))(theta)["w"]
  np.testing.assert_array_equal(np.asarray(gw), (np.abs(x) <= q).astype(np.float32))


@pytest.mark.parametrize("bits", [8, 4])
def test_lsq_step_size_starts_at_the_papers_value(bits):
  """Esser et al. 2020: s₀ = 2⟨|w|⟩/√Q_P (per output channel here)."""
  w = jax.random.normal(jax.random.key(7), (32, 5)) * jnp.arange(1.0, 6.0)
  theta = reparam.parse_spec(f"quant(bits={bits}, scale=learned)").from_dense(w)
  want = 2 * np.abs(np.asarray(w)).mean(0) / np.sqrt(qmax(bits))
  np.testing.assert_allclose(np.asarray(theta["scale"]), want, rtol=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
  w = jax.random.normal(jax.random.key(2), (64, 16)) * jnp.linspace(0.01, 3.0, 16)
  q, s = quantize(w, bits)
  assert q.dtype == jnp.int8 and int(jnp.abs(q).max()) <= qmax(bits)
  err = np.abs(np.asarray(dequantize(q, s) - w))
  assert (err <= np.asarray(s)[None, :] / 2 + 1e-7).all()
  # fake quantization (max scale) is the same grid
  fq = reparam.parse_spec(f"quant(bits={bits})").apply({"w": w})
  np.testing.assert_allclose(np.asarray(fq), np.asarray(dequantize(q, s)), atol=1e-6)


def test_qweight_stores_int8_and_is_not_trainable():
  cfg = TransformerConfig(vocab_size=32, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=8)
  model = Transformer(cfg)
  ids = jnp.zeros((1, 8), jnp.int32)
  dense = model.init(jax.random.key(0), ids)["params"]
  rc = ml_collections.ConfigDict(dict(rules=((r"block_\d+/(attn|mlp)/\w+/kernel", "qweight"),)))
  theta = nn.meta.unbox(Reparam.from_config(rc).from_dense(dense))
  node = theta["block_0"]["mlp"]["fc_in"]["kernel"]
  assert node["q"].dtype == jnp.int8 and node["scale"].dtype == jnp.float32
  out = reparam.wrap(model, rc).apply({"params": theta}, ids)["logits"]
  ref = model.apply({"params": dense}, ids)["logits"]
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 1e-3
  assert not any(jax.tree.leaves(Reparam.from_config(rc).trainable_mask(theta)["block_0"]["mlp"]["fc_in"]["kernel"]))
  rows = Reparam.from_config(rc).report_rows(theta)
  assert rows[0]["bits_per_weight"] == pytest.approx(8 + 32 / rows[0]["shape"][0])


def test_activation_fake_quant_inside_left_matmul():
  node = reparam.parse_spec("quant(bits=8, act_bits=8)")
  w = jax.random.normal(jax.random.key(3), (16, 4))
  x = jax.random.normal(jax.random.key(4), (2, 5, 16))
  kernel = node.apply({"w": w})
  y = kernel.left_matmul(x)
  want = fake_quant_tokens(x, 8) @ node.apply({"w": w}).dense()
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-5)
  assert float(jnp.abs(y - x @ w).max()) > 0  # something was quantized
  gx = jax.grad(lambda x: jnp.sum(kernel.left_matmul(x)))(x)  # STE: no clipping at max scale
  np.testing.assert_allclose(np.asarray(gx), np.broadcast_to(np.asarray(kernel.dense()).sum(1), x.shape),
                             rtol=1e-5)
