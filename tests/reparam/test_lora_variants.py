"""The LoRA family against the papers' formulas: rsLoRA, LoRA dropout, PiSSA, OLoRA, LoftQ, DoRA.

Each expected value is computed here with numpy from the paper's equation,
not with the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.reparam import materialize
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms.lora import LoRA

M, N, R = 12, 9, 3


def _w(seed=0, shape=(M, N)):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float32))


def _with_b(theta, seed=4):
  """θ with a random non-zero B (at any depth), so the update is not trivially 0."""
  out = dict(theta)
  for k, v in theta.items():
    if k == "lora_b":
      out[k] = jax.random.normal(jax.random.key(seed), v.shape, v.dtype)
    elif isinstance(v, dict):
      out[k] = _with_b(v, seed)
  return out


def test_rslora_scale_is_alpha_over_sqrt_rank():
  w = _w()
  for rslora, expected in ((False, 8.0 / 4), (True, 8.0 / 2)):
    node = parse_spec(f"lora(rank=4, alpha=8, rslora={rslora})")
    theta = _with_b(node.from_dense(jnp.asarray(w), jax.random.key(1)))
    a, b = np.asarray(theta["lora_a"]), np.asarray(theta["lora_b"])
    np.testing.assert_allclose(materialize(node.apply(theta)), w + expected * a @ b, atol=1e-5)


def test_lora_dropout_drops_the_adapter_input_only_in_training():
  node = parse_spec(f"lora(rank={R}, alpha=6, dropout=0.5)")
  w = _w()
  theta = _with_b(node.from_dense(jnp.asarray(w), jax.random.key(1)))
  a, b, s = np.asarray(theta["lora_a"]), np.asarray(theta["lora_b"]), 6.0 / R
  x = np.asarray(jax.random.normal(jax.random.key(2), (5, M)))
  # Evaluation (no rng): the plain LoRA product.
  y_eval = node.apply(theta, None).left_matmul(jnp.asarray(x))
  np.testing.assert_allclose(y_eval, x @ w + s * (x @ a) @ b, atol=1e-4)
  # Training: the kernel's own mask, applied to the adapter's input, rescaled by 1/(1−p).
  kernel = node.apply(theta, jax.random.key(3))
  keep = np.asarray(jax.random.bernoulli(kernel.dropout_rng, 0.5, x.shape))
  x_drop = np.where(keep, x / 0.5, 0.0)
  y_train = kernel.left_matmul(jnp.asarray(x))
  np.testing.assert_allclose(y_train, x @ w + s * (x_drop @ a) @ b, atol=1e-4)
  assert 0.3 < keep.mean() < 0.7
  assert not np.allclose(y_train, y_eval, atol=1e-3)


def test_pissa_puts_the_principal_part_in_the_adapter_and_the_rest_in_the_base():
  w = _w()
  node = parse_spec(f"lora(rank={R}, alpha=6, init=pissa)")
  theta = node.from_dense(jnp.asarray(w))
  u, sv, vt = np.linalg.svd(w, full_matrices=False)
  s = 6.0 / R
  principal = (u[:, :R] * sv[:R]) @ vt[:R]
  a, b = np.asarray(theta["lora_a"]), np.asarray(theta["lora_b"])
  np.testing.assert_allclose(s * a @ b, principal, atol=1e-4)
  # A = U_r √(S_r/s) (up to each singular vector's sign), B = √(S_r/s) V_rᵀ.
  np.testing.assert_allclose(np.abs(a), np.abs(u[:, :R] * np.sqrt(sv[:R] / s)), atol=1e-4)
  np.testing.assert_allclose(np.asarray(theta["base"]), w - principal, atol=1e-4)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(theta["base"]), compute_uv=False)[:N - R],
                             sv[R:], atol=1e-4)
  np.testing.assert_allclose(materialize(node.apply(theta)), w, atol=1e-4)  # starts at W


def test_olora_uses_the_qr_factors_of_the_weight():
  w = _w(1)
  node = parse_spec(f"lora(rank={R}, alpha=6, init=olora)")
  theta = node.from_dense(jnp.asarray(w))
  q, r = np.linalg.qr(w.T)  # PEFT: QR of the [d_out, d_in] weight
  a, b = np.asarray(theta["lora_a"]), np.asarray(theta["lora_b"])
  # Q_r R_r does not depend on the sign convention of the decomposition.
  np.testing.assert_allclose(a @ b, (q[:, :R] @ r[:R]).T, atol=1e-4)
  np.testing.assert_allclose(np.abs(b @ b.T), np.eye(R), atol=1e-4)  # B's rows orthonormal
  np.testing.assert_allclose(np.asarray(theta["base"]), w - 2.0 * a @ b, atol=1e-4)
  np.testing.assert_allclose(materialize(node.apply(theta)), w, atol=1e-4)


def _qerr(node, theta, w):
  return float(np.linalg.norm(np.asarray(materialize(node.apply(theta))) - w))


def _quantizer(spec):
  """q of LoftQ's Algorithm 1 as a numpy function: the project's quantizer, round trip."""
  node = parse_spec(spec)
  return lambda x: np.asarray(materialize(node.apply(node.from_dense(jnp.asarray(x)))))


def loftq_reference(w, quantize, rank, iters):
  """LoftQ, Algorithm 1 of Li et al. 2023, restated in numpy: A₀B₀ᵀ = 0; for t = 1..T,
  Q_t = q(W − A_{t−1}B_{t−1}ᵀ) and A_t B_tᵀ = SVD_r(W − Q_t); returns (Q_T, A_T B_Tᵀ)."""
  low = np.zeros_like(w)
  for _ in range(iters):
    q = quantize(w - low)
    u, sv, vt = np.linalg.svd(w - q, full_matrices=False)
    low = (u[:, :rank] * sv[:rank]) @ vt[:rank]
  return q, low


@pytest.mark.parametrize("bits,iters", [(2, 1), (2, 3), (4, 1), (4, 4)])
def test_loftq_is_algorithm_1(bits, iters):
  w = _w(2, (32, 16))
  base_spec = f"qweight(bits={bits})"
  # alpha=8 at rank 4: s = 2, so the factors carry 1/s (s·A B is the paper's A Bᵀ).
  node = parse_spec(f"{base_spec}|lora(rank=4, init=loftq, iters={iters})")
  theta = node.from_dense(jnp.asarray(w))
  assert theta["base"]["q"].dtype == jnp.int8  # the base stays quantized
  q_t, low_t = loftq_reference(w, _quantizer(base_spec), 4, iters)
  base = np.asarray(materialize(parse_spec(base_spec).apply(theta["base"])))
  np.testing.assert_allclose(base, q_t, atol=1e-5)  # Q_T, not a further q(W − A_T B_Tᵀ)
  a, b = np.asarray(theta["lora_a"]), np.asarray(theta["lora_b"])
  np.testing.assert_allclose(2.0 * a @ b, low_t, atol=1e-4)
  # Q_T + A_T B_Tᵀ is Q_T plus the best rank-4 fit of what Q_T lost: never further from W.
  assert _qerr(node, theta, w) < np.linalg.norm(w - q_t)


def test_loftq_starts_closer_to_w_than_the_quantized_base():
  w = _w(2, (32, 16))
  plain = parse_spec("qweight(bits=4)")
  err_quant = _qerr(plain, plain.from_dense(jnp.asarray(w)), w)
  errs = []
  for iters in (1, 4):
    node = parse_spec(f"qweight(bits=4)|lora(rank=4, init=loftq, iters={iters})")
    errs.append(_qerr(node, node.from_dense(jnp.asarray(w)), w))
  assert errs[0] < 0.9 * err_quant, (errs, err_quant)
  assert errs[1] <= errs[0] * 1.001, errs


def test_loftq_needs_a_lossy_base():
  with pytest.raises(UserError, match="lossy"):
    parse_spec("lora(rank=2, init=loftq)").from_dense(jnp.asarray(_w()))


def test_bad_lora_arguments_are_named():
  assert any("init=" in p for p in LoRA(init="svd").arg_problems())
  assert any("dropout" in p for p in LoRA(dropout=1.5).arg_problems())


def test_dora_is_lora_then_magnitude():
  w = _w(3)
  node = parse_spec(f"lora(rank={R}, alpha=6)|magnitude")
  theta = node.from_dense(jnp.asarray(w), jax.random.key(0))
  np.testing.assert_allclose(theta["magnitude"], np.linalg.norm(w, axis=0), rtol=1e-5)
  np.testing.assert_allclose(materialize(node.apply(theta)), w, atol=1e-5)  # starts at W₀
  theta = _with_b(theta)
  theta["magnitude"] = theta["magnitude"] * jnp.linspace(0.5, 1.5, N)
  inner = theta["base"]
  v = np.asarray(inner["base"]) + 2.0 * np.asarray(inner["lora_a"]) @ np.asarray(inner["lora_b"])
  expected = np.asarray(theta["magnitude"]) * v / np.linalg.norm(v, axis=0)  # DoRA eq. (5)
  kernel = node.apply(theta)
  np.testing.assert_allclose(materialize(kernel), expected, atol=1e-4)
  x = np.asarray(jax.random.normal(jax.random.key(2), (4, M)))
  np.testing.assert_allclose(kernel.left_matmul(jnp.asarray(x)), x @ expected, atol=1e-4)
  flags = node.trainable(theta)
  assert flags["magnitude"] and flags["base"]["lora_a"] and flags["base"]["lora_b"]
  assert not flags["base"]["base"]  # W₀ stays frozen under DoRA


def test_dora_detaches_the_norm_as_the_paper_does():
  w = _w(4)
  x = jax.random.normal(jax.random.key(2), (4, M))

  def grads(spec):
    node = parse_spec(spec)
    theta = _with_b(node.from_dense(jnp.asarray(w), jax.random.key(0)))

    def loss(b):
      t = {**theta, "base": {**theta["base"], "lora_b": b}}
      return jnp.sum(jnp.sin(node.apply(t).left_matmul(x)))
    return theta, jax.grad(loss)(theta["base"]["lora_b"])

  theta, g_detached = grads(f"lora(rank={R})|magnitude")
  _, g_full = grads(f"lora(rank={R})|magnitude(detach_norm=True)")
  np.testing.assert_allclose(g_detached, g_full)
  # Detached: ∂/∂B of Σ sin(x W) with W = V·c, c = m/‖V‖ held constant.
  inner = theta["base"]
  a, b = np.asarray(inner["lora_a"]), np.asarray(inner["lora_b"])
  v = np.asarray(inner["base"]) + (8.0 / R) * a @ b
  c = np.asarray(theta["magnitude"]) / np.linalg.norm(v, axis=0)
  xn = np.asarray(x)
  dy = np.cos(xn @ (v * c))
  expected = (8.0 / R) * (xn @ a).T @ (dy * c)
  np.testing.assert_allclose(g_detached, expected, atol=1e-3)
  _, g_through = grads(f"lora(rank={R})|magnitude(detach_norm=False)")
  assert not np.allclose(g_through, expected, atol=1e-3)


def test_dora_with_lora_dropout_is_peft_training_forward():
  """PEFT's `lora.Linear.forward` with DoRA and dropout in training: `result = base(x)` on
  the undropped x, plus DoRA's term on x_d = dropout(x) (`dora.py`, base_result=None):
  (c − 1)·(x_d W₀) + c·s·(x_d A) B, with c = m/‖W₀ + s·A B‖_c.  In evaluation dropout is
  the identity and this is c·(x W₀ + s·(x A) B) = x W."""
  w = _w(6)
  node = parse_spec(f"lora(rank={R}, alpha=6, dropout=0.5)|magnitude")
  theta = _with_b(node.from_dense(jnp.asarray(w), jax.random.key(0)))
  theta["magnitude"] = theta["magnitude"] * jnp.linspace(0.5, 1.5, N)  # c ≠ 1
  inner = theta["base"]
  w0, a, b = (np.asarray(inner[k], np.float64) for k in ("base", "lora_a", "lora_b"))
  s = 6.0 / R
  c = np.asarray(theta["magnitude"], np.float64) / np.linalg.norm(w0 + s * a @ b, axis=0)
  x = np.asarray(jax.random.normal(jax.random.key(2), (5, M)), np.float64)
  y_eval = node.apply(theta, None).left_matmul(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y_eval, c * (x @ w0 + s * (x @ a) @ b), atol=1e-4)
  kernel = node.apply(theta, jax.random.key(3))
  keep = np.asarray(jax.random.bernoulli(kernel.inner.dropout_rng, 0.5, x.shape))
  x_d = np.where(keep, x / 0.5, 0.0)
  peft = x @ w0 + (c - 1) * (x_d @ w0) + c * (s * (x_d @ a) @ b)
  np.testing.assert_allclose(kernel.left_matmul(jnp.asarray(x, jnp.float32)), peft, atol=1e-4)
  assert 0.3 < keep.mean() < 0.7


def test_stacks_of_the_family_compose():
  """QDoRA (a 4-bit base under DoRA) and PiSSA under DoRA start where their parts say."""
  w = jnp.asarray(_w(5, (16, 8)))
  q4 = parse_spec("q4(block_size=4)")
  quantized = np.asarray(materialize(q4.apply(q4.from_dense(w))))
  node = parse_spec("q4(block_size=4)|lora(rank=2)|magnitude")
  theta = node.from_dense(w, jax.random.key(0))
  np.testing.assert_allclose(materialize(node.apply(theta)), quantized, atol=1e-5)
  flags = node.trainable(theta)
  assert flags["magnitude"] and flags["base"]["lora_a"]
  assert not any(jax.tree.leaves(flags["base"]["base"]))  # the packed codes never train
  node = parse_spec("lora(rank=2, init=pissa)|magnitude")
  np.testing.assert_allclose(materialize(node.apply(node.from_dense(w))), w, atol=1e-4)


def test_lora_adapter_product_gradient_equals_autodiff():
  """kernels._adapter_product's hand-written backward is the autodiff one (values and grads)."""
  from reparam_jax.reparam.kernels import _adapter_product  # noqa: PLC0415
  ks = jax.random.split(jax.random.key(0), 4)
  x, a = jax.random.normal(ks[0], (2, 5, 6)), jax.random.normal(ks[1], (6, 3))
  b, probe = jax.random.normal(ks[2], (3, 7)), jax.random.normal(ks[3], (2, 5, 7))

  def loss(fn, x, a, b):
    return jnp.sum(jnp.tanh(fn(x, a, b)) * probe)

  def autodiff(x, a, b):
    return 1.5 * ((x @ a) @ b)

  def by_hand(x, a, b):
    return _adapter_product(1.5, x, a, b)

  np.testing.assert_allclose(by_hand(x, a, b), autodiff(x, a, b), rtol=1e-6)
  got = jax.grad(lambda *t: loss(by_hand, *t), argnums=(0, 1, 2))(x, a, b)
  want = jax.grad(lambda *t: loss(autodiff, *t), argnums=(0, 1, 2))(x, a, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
