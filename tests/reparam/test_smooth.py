"""The `smooth` stage: a frozen input-channel scale s, the layer computing inner(x / s)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.reparam import materialize
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms.smooth import InputScaledKernel, scaled_theta

D_IN, D_OUT = 6, 4


def _layer(seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
  s = rng.uniform(0.2, 5.0, size=D_IN).astype(np.float32)
  x = rng.normal(size=(3, D_IN)).astype(np.float32)
  return w, s, x


def _int8_rows(a):
  """Symmetric int8 fake quantization of each row of `a` (max scale), by hand."""
  step = np.abs(a).max(axis=-1, keepdims=True) / 127
  return np.round(a / step) * step


@pytest.mark.parametrize("spec", ["smooth", "identity|smooth", "qweight(bits=8)|smooth"])
def test_forward_is_x_times_the_effective_weight(spec):
  """The layer computes x @ w_eff with w_eff = dense() = diag(1/s)·W' (W' what the base stores)."""
  w, s, x = _layer()
  node = parse_spec(spec)
  theta = scaled_theta(node, w, s)
  np.testing.assert_allclose(theta["smooth_s"], s)
  kernel = node.apply(theta)
  assert isinstance(kernel, InputScaledKernel)
  w_eff = np.asarray(materialize(kernel))
  stored = np.asarray(materialize(node.inner.apply(theta["base"])))
  np.testing.assert_allclose(w_eff, stored / s[:, None], rtol=1e-6)
  np.testing.assert_allclose(kernel.left_matmul(x), x @ w_eff, rtol=1e-5, atol=1e-5)
  # Float storage holds w exactly; int8 storage holds s·w to int8 per column of s·w.
  tol = 1e-6 if "qweight" not in spec else np.abs(s[:, None] * w).max(0) / 127 / s.min()
  assert np.all(np.abs(w_eff - w) <= tol * 1.0001 + 1e-6)


def test_activation_grid_is_per_token_of_x_over_s():
  """With quant's act_bits under smooth, what is quantized per token is x / s, not x."""
  w, s, x = _layer(1)
  x[:, 2] *= 30  # an outlier channel, as SmoothQuant's inputs have
  node = parse_spec("quant(bits=8, act_bits=8)|smooth")
  kernel = node.apply(scaled_theta(node, w, s))
  w_int8 = _int8_rows((s[:, None] * w).T).T  # W' = diag(s)·w, int8 per output column
  by_hand = _int8_rows(x / s) @ w_int8
  y = np.asarray(kernel.left_matmul(jnp.asarray(x)))
  np.testing.assert_allclose(y, by_hand, rtol=1e-5, atol=1e-5)
  wrong_order = (_int8_rows(x) / s) @ w_int8  # the grid of x, then divided
  assert np.abs(y - wrong_order).max() > 100 * np.abs(y - by_hand).max()
  # dense() is the true weight (the one exports see): int8 W' scaled back by 1/s.
  np.testing.assert_allclose(materialize(kernel), w_int8 / s[:, None], rtol=1e-5, atol=1e-6)


def test_s_is_frozen_and_the_base_trains_as_alone():
  w, s, x = _layer(2)
  node = parse_spec("smooth")
  theta = scaled_theta(node, w, s)
  assert node.trainable(theta) == {"base": True, "smooth_s": False}
  assert node.decayable(theta)["smooth_s"] is False

  def loss(th):
    return jnp.sum(jnp.sin(node.apply(th).left_matmul(x)))

  grads = jax.grad(loss)(jax.tree.map(jnp.asarray, theta))
  assert float(jnp.abs(grads["smooth_s"]).max()) == 0.0
  assert float(jnp.abs(grads["base"]).max()) > 0.0
  assert parse_spec("qweight(bits=8)|smooth").trainable(
      scaled_theta(parse_spec("qweight(bits=8)|smooth"), w, s))["base"] == {"q": False,
                                                                          "scale": False}


def test_without_calibration_s_is_one():
  w, _, x = _layer(3)
  node = parse_spec("smooth")
  theta = node.from_dense(jnp.asarray(w))
  np.testing.assert_array_equal(theta["smooth_s"], np.ones(D_IN, np.float32))
  np.testing.assert_allclose(node.apply(theta).left_matmul(x), x @ w, rtol=1e-6)


def test_scaled_theta_refuses_a_stack_without_smooth_and_a_wrong_shape():
  w, s, _ = _layer()
  with pytest.raises(UserError, match="does not end in 'smooth'"):
    scaled_theta(parse_spec("quant(bits=8)"), w, s)
  with pytest.raises(UserError, match="one scale per input row"):
    scaled_theta(parse_spec("smooth"), w, s[:-1])


@pytest.mark.parametrize("spec", ["smooth|lora(rank=2)", "quant(bits=8, act_bits=8)|smooth"])
def test_a_transformer_with_calibrated_scales_computes_with_its_dense_weights(spec):
  """In a model, with s ≠ 1 on every kernel: the wrapped model equals the bare model on the
  dense weights (what merges and exports see), exactly without activation quantization and
  to int8 activation rounding with it."""
  import flax.linen as nn
  import ml_collections

  from reparam_jax import reparam
  from reparam_jax.models import Transformer, TransformerConfig
  from reparam_jax.reparam import Reparam

  cfg = TransformerConfig(vocab_size=32, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=8)
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 32
  rc = ml_collections.ConfigDict(dict(rules=((r"block_\d+/(attn|mlp)/\w+/kernel", spec),)))
  model = Transformer(cfg)
  wrapped = reparam.wrap(model, rc)
  params = nn.meta.unbox(wrapped.init(jax.random.key(0), ids)["params"])
  scales = []

  def calibrated(path, leaf):
    if path[-1].key != "smooth_s":
      return leaf
    scales.append(jax.random.uniform(jax.random.key(len(scales)), leaf.shape, leaf.dtype, 0.1, 10))
    return scales[-1]

  params = jax.tree_util.tree_map_with_path(calibrated, params)
  if "lora" in spec:  # a non-zero adapter, so the stack above smooth is exercised too
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: 0.1 * jnp.ones_like(v) if p[-1].key == "lora_b" else v, params)
  assert len(scales) == 6  # q, k, v, o and the MLP's two kernels
  y = wrapped.apply({"params": params}, ids)["logits"]
  y_dense = model.apply({"params": Reparam.from_config(rc).to_dense(params)}, ids)["logits"]
  tol = 5e-2 if "act_bits" in spec else 2e-5
  np.testing.assert_allclose(y, y_dense, atol=tol)
  assert float(jnp.abs(y - y_dense).max()) > (1e-4 if "act_bits" in spec else -1)
