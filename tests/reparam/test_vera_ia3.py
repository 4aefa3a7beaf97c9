"""VeRA and (IA)³ against their papers' equations, written out in numpy in the papers'
[d_out, d_in] layout (y = W x), and one tiny Transformer trained with both."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam, materialize
from reparam_jax.reparam.rules import parse_spec, parse_stage
from reparam_jax.reparam.stats import weight_stats
from reparam_jax.reparam.transforms.vera import projections
from reparam_jax.training import optim

KEY = jax.random.key(0)


def _w(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# --- an independent Threefry-2x32 (Salmon et al. 2011), for the projection values ---

def _threefry2x32(k0: int, k1: int, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
  """20 rounds of Threefry-2x32 on uint32 arrays; the first output word."""
  rot = [13, 15, 26, 6, 17, 29, 16, 24]
  ks = [np.uint64(k0), np.uint64(k1), np.uint64(k0 ^ k1 ^ 0x1BD11BDA)]
  m = np.uint64(0xFFFFFFFF)
  x = [(x0.astype(np.uint64) + ks[0]) & m, (x1.astype(np.uint64) + ks[1]) & m]
  for block in range(5):
    for r in rot[4 * (block % 2):4 * (block % 2) + 4]:
      x[0] = (x[0] + x[1]) & m
      x[1] = ((x[1] << np.uint64(r)) | (x[1] >> np.uint64(32 - r))) & m
      x[1] = x[1] ^ x[0]
    x[0] = (x[0] + ks[(block + 1) % 3]) & m
    x[1] = (x[1] + ks[(block + 2) % 3] + np.uint64(block + 1)) & m
  return x[0].astype(np.uint32), x[1].astype(np.uint32)


def _uniform_pm1(bits: np.ndarray) -> np.ndarray:
  """The 23 high bits as a fraction in [0, 1), mapped to [−1, 1)."""
  return 2.0 * ((bits >> 9).astype(np.float64) / 2**23) - 1.0


def test_numpy_threefry_known_answer():
  # The Random123 known-answer vector (key and counter from the digits of π).
  y0, y1 = _threefry2x32(0x13198A2E, 0x03707344, np.array([0x243F6A88], np.uint32),
                         np.array([0x85A308D3], np.uint32))
  assert (int(y0[0]), int(y1[0])) == (0xC4923A9C, 0x483DF7A0)


def test_vera_projections_are_counter_based_kaiming_uniform():
  """Aᵀ[i, k] = √(6/d_in)·U(seed, 0; i, k), Bᵀ[k, j] = √(6/r)·U(seed, 1; j, k) (PEFT's Kaiming)."""
  seed, r, d_in, d_out = 7, 3, 6, 5
  a, b = projections(seed, r, d_in, d_out)
  i, k = np.meshgrid(np.arange(d_in, dtype=np.uint32), np.arange(r, dtype=np.uint32),
                     indexing="ij")
  want_a = np.sqrt(6 / d_in) * _uniform_pm1(_threefry2x32(seed, 0, i, k)[0])
  k, j = np.meshgrid(np.arange(r, dtype=np.uint32), np.arange(d_out, dtype=np.uint32),
                     indexing="ij")
  want_b = np.sqrt(6 / r) * _uniform_pm1(_threefry2x32(seed, 1, j, k)[0])
  np.testing.assert_allclose(a, want_a, rtol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-6)
  # Statistics of a larger draw: in the bound, mean 0, variance bound²/3 = 2/fan_in.
  a, b = projections(0, 64, 512, 384)
  assert float(jnp.abs(a).max()) <= np.sqrt(6 / 512) and float(jnp.abs(b).max()) <= np.sqrt(6 / 64)
  assert float(jnp.var(a)) == pytest.approx(2 / 512, rel=0.03)
  assert float(jnp.var(b)) == pytest.approx(2 / 64, rel=0.03)
  assert abs(float(jnp.mean(a))) < 3 * np.sqrt(2 / 512 / a.size)


# --- VeRA --------------------------------------------------------------------------

def _vera_theta(spec, shape, seed=1):
  node = parse_spec(spec)
  theta = node.init_from(KEY, _w(shape, seed))
  theta["vera_d"] = _w(theta["vera_d"].shape, seed + 10)
  theta["vera_b"] = _w(theta["vera_b"].shape, seed + 20)
  return node, theta


def test_vera_matches_the_paper_formula():
  """Paper: h = W₀x + Λ_b B Λ_d A x with A: [r, d_in], B: [d_out, r]; ours is its transpose."""
  node, theta = _vera_theta("vera(rank=3, seed=5)", (6, 5))
  a_IxR, b_RxO = projections(5, 3, 6, 5)
  w0 = np.asarray(theta["base"], np.float64).T  # [d_out, d_in]
  A, B = np.asarray(a_IxR, np.float64).T, np.asarray(b_RxO, np.float64).T  # [r, d_in], [d_out, r]
  d, b = np.asarray(theta["vera_d"], np.float64), np.asarray(theta["vera_b"], np.float64)
  w_paper = w0 + np.diag(b) @ B @ np.diag(d) @ A
  kernel = node.apply(theta)
  np.testing.assert_allclose(materialize(kernel), w_paper.T, rtol=1e-5, atol=1e-6)
  x = np.asarray(_w((4, 6), seed=3), np.float64)
  h = (w_paper @ x.T).T
  np.testing.assert_allclose(kernel.left_matmul(jnp.asarray(x, jnp.float32)), h, rtol=1e-5,
                             atol=1e-5)


def test_vera_pair_is_one_shared_slice_across_layers_and_not_a_parameter():
  """Two layers of different shapes see the leading slice of the same Aᵀ and Bᵀ."""
  small, small_theta = _vera_theta("vera(rank=4, fan_in=8)", (6, 5))
  large, large_theta = _vera_theta("vera(rank=4, fan_in=8)", (8, 7), seed=2)
  ks, kl = small.apply(small_theta), large.apply(large_theta)
  np.testing.assert_array_equal(ks.proj_a, kl.proj_a[:6])
  np.testing.assert_array_equal(ks.proj_b, kl.proj_b[:, :5])
  # With the default fan_in (each layer's d_in) the draws are shared, the bound per layer.
  a6, _ = projections(0, 4, 6, 5)
  a8, _ = projections(0, 4, 8, 7)
  np.testing.assert_allclose(a6 / np.sqrt(6 / 6), a8[:6] / np.sqrt(6 / 8), rtol=1e-6)
  # Not stored and not trained: θ holds the base and the two vectors only.
  assert set(small_theta) == {"base", "vera_d", "vera_b"}
  assert small.trainable(small_theta) == {"base": False, "vera_d": True, "vera_b": True}


def test_vera_starts_at_w0_and_counts():
  w = _w((6, 5))
  node = parse_spec("vera(rank=3)")
  theta = node.init_from(KEY, w)
  np.testing.assert_array_equal(theta["vera_d"], np.full(3, 0.1, np.float32))
  np.testing.assert_array_equal(materialize(node.apply(theta)), w)
  x = _w((2, 6), seed=4)
  np.testing.assert_array_equal(node.apply(theta).left_matmul(x), x @ w)
  stats = weight_stats(node, theta, "k")
  assert (stats["dense"], stats["stored"], stats["trainable"]) == (30, 30 + 3 + 5, 3 + 5)
  # Matmul FLOPs per token: the frozen x W₀ plus (x Aᵀ) [2·d_in·r] and (· Bᵀ) [2·r·d_out].
  assert stats["flops"] == 2 * 6 * 5 + 2 * 3 * (6 + 5)
  # With the layer's shape (d_in not readable from a structured base's FLOPs) the count
  # is base + 2r(d_in + d_out) for any base: here a rank-2 factored one.
  low = parse_spec("lowrank(rank=2)|vera(rank=3)")
  lt = low.init_from(KEY, w)
  own = {k: lt[k] for k in ("vera_d", "vera_b")}
  assert low.outer.wrap_flops(own, low.inner.flops(lt["base"]), (6, 5)) == \
      2 * 2 * (6 + 5) + 2 * 3 * (6 + 5)
  # The rank may exceed min(d_in, d_out) (the paper's r = 1024 on 768-wide layers).
  parse_spec("vera(rank=16)").check((6, 5))


def test_vera_gradients_reach_only_the_vectors_and_match_the_formula():
  node, theta = _vera_theta("vera(rank=3)", (6, 5))
  x = _w((4, 6), seed=3)
  g_out = _w((4, 5), seed=6)  # L = Σ g ⊙ y, so dL/dW = xᵀ g

  def loss(t):
    return jnp.sum(g_out * node.apply(t).left_matmul(x))

  grads = jax.grad(loss)(theta)
  np.testing.assert_array_equal(grads["base"], 0.0)  # stop_gradient: W₀ gets none
  a, b_mat = (np.asarray(m, np.float64) for m in projections(0, 3, 6, 5))
  d, b = np.asarray(theta["vera_d"], np.float64), np.asarray(theta["vera_b"], np.float64)
  gw = np.asarray(x, np.float64).T @ np.asarray(g_out, np.float64)  # [d_in, d_out]
  # W = W₀ + Σ_k a[:, k] d_k b_mat[k, :] ⊙ b:  ∂L/∂d_k = Σ_ij a_ik b_mat_kj b_j gw_ij, etc.
  want_d = np.einsum("ik,kj,j,ij->k", a, b_mat, b, gw)
  want_b = np.einsum("ik,k,kj,ij->j", a, d, b_mat, gw)
  np.testing.assert_allclose(grads["vera_d"], want_d, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads["vera_b"], want_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["vera(rank=3)", "lowrank(rank=2)|vera(rank=3)",
                                  "ia3", "ia3(side=input)", "lowrank(rank=2)|ia3(side=input)"])
def test_left_matmul_equals_x_times_dense(spec):
  node = parse_spec(spec)
  theta = node.init_from(KEY, _w((6, 5)))
  own = [k for k in theta if k != "base"]
  for i, k in enumerate(own):  # move off the identity start so every term counts
    theta[k] = _w(theta[k].shape, seed=30 + i)
  kernel = node.apply(theta)
  x = _w((2, 3, 6), seed=7)
  np.testing.assert_allclose(kernel.left_matmul(x), x @ kernel.dense(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, problem", [
    ("vera(rank=0)", "rank=0"), ("vera(seed=-1)", "seed=-1"), ("vera(fan_in=-2)", "fan_in=-2"),
    ("ia3(side=middle)", "side='middle'")])
def test_bad_arguments_are_user_errors(spec, problem):
  stage = parse_stage(spec)
  assert any(problem in p for p in stage.arg_problems())
  with pytest.raises(UserError, match=problem.replace("(", r"\(")):
    stage.check((6, 5))


# --- (IA)³ -----------------------------------------------------------------------

@pytest.mark.parametrize("side", ["output", "input"])
def test_ia3_matches_the_paper_formula(side):
  """Paper: l ⊙ (W₀ x) for keys and values; W₀ (l ⊙ x) for the FFN's second matrix."""
  node = parse_spec(f"ia3(side={side})")
  w = _w((6, 5))
  theta = node.init_from(KEY, w)
  n_l = 5 if side == "output" else 6
  assert theta["ia3_l"].shape == (n_l,)
  np.testing.assert_array_equal(theta["ia3_l"], np.ones(n_l, np.float32))
  np.testing.assert_array_equal(materialize(node.apply(theta)), w)  # starts at W₀ exactly
  theta["ia3_l"] = _w((n_l,), seed=8)
  w0 = np.asarray(w, np.float64).T  # [d_out, d_in]
  l = np.asarray(theta["ia3_l"], np.float64)
  x = np.asarray(_w((4, 6), seed=3), np.float64)
  h = np.stack([l * (w0 @ xi) if side == "output" else w0 @ (l * xi) for xi in x])
  kernel = node.apply(theta)
  np.testing.assert_allclose(kernel.left_matmul(jnp.asarray(x, jnp.float32)), h, rtol=1e-5,
                             atol=1e-5)
  w_paper = np.diag(l) @ w0 if side == "output" else w0 @ np.diag(l)
  np.testing.assert_allclose(materialize(kernel), w_paper.T, rtol=1e-6)
  # Gradient only into l: ∂L/∂l_j = Σ_i W₀[i, j] (xᵀ g)[i, j] (columns) or the row sums.
  g_out = np.asarray(_w((4, 5), seed=6), np.float64)
  grads = jax.grad(lambda t: jnp.sum(jnp.asarray(g_out, jnp.float32)
                                     * node.apply(t).left_matmul(jnp.asarray(x, jnp.float32))))(theta)
  np.testing.assert_array_equal(grads["base"], 0.0)
  gw = x.T @ g_out
  want = (np.asarray(w, np.float64) * gw).sum(0 if side == "output" else 1)
  np.testing.assert_allclose(grads["ia3_l"], want, rtol=1e-4, atol=1e-5)
  stats = weight_stats(node, theta, "k")
  assert (stats["stored"], stats["trainable"], stats["flops"]) == (30 + n_l, n_l, 2 * 30)
  assert node.decayable(theta)["ia3_l"] is False  # decay to 0 would switch the layer off


# --- end to end: the project Transformer ---------------------------------------------

def test_tiny_transformer_trains_only_the_vectors():
  cfg = TransformerConfig(vocab_size=16, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=8)
  rc = ml_collections.ConfigDict(dict(rules=(
      (r"block_\d+/attn/query/kernel", "vera(rank=4)"),
      (r"block_0/attn/value/kernel", "vera(rank=4)"),
      (r"block_\d+/attn/key/kernel|block_1/attn/value/kernel", "ia3"),
      (r"block_\d+/mlp/fc_out/kernel", "ia3(side=input)"),
      (r".*", "frozen"),
  )))
  rp = Reparam.from_config(rc)
  model = rp.wrap(Transformer(cfg))
  seq = (jnp.arange(9)[None] + jnp.arange(4)[:, None]) % 16
  params = nn.meta.unbox(model.init(jax.random.key(0), seq[:, :-1])["params"])
  mask = rp.trainable_mask(params)
  n_train = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
  # vera: r + d_out on 3 kernels; ia3: d_out on 3 kernels, d_in = mlp_dim on 2.
  assert n_train == 3 * (4 + 16) + 3 * 16 + 2 * 32
  tx = optim.freeze(optax.adam(3e-2), mask)

  def loss_fn(p):
    logits = model.apply({"params": p}, seq[:, :-1])["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, seq[:, 1:]).mean()

  @jax.jit
  def step(p, opt):
    loss, g = jax.value_and_grad(loss_fn)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss

  new, opt = params, tx.init(params)
  losses = []
  for _ in range(20):
    new, opt, loss = step(new, opt)
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses
  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
    name = jax.tree_util.keystr(path)
    moved = not np.array_equal(np.asarray(leaf), np.asarray(flat_old[path]))
    is_vector = name.endswith(("['vera_d']", "['vera_b']", "['ia3_l']"))
    assert moved == is_vector, name


def test_vera_flops_over_a_factored_base_use_the_weight_shape():
  # lowrank's own FLOPs are 2·r·(d_in + d_out); VeRA adds 2·r_v·(d_in + d_out) whatever
  # the base stores (Wrapped passes W's shape: no θ leaf of VeRA is d_in long).
  node = parse_spec("lowrank(rank=2)|vera(rank=4)")
  theta = node.from_dense(jax.random.normal(jax.random.key(0), (16, 32)), jax.random.key(1))
  assert node.flops(theta) == 2 * 2 * (16 + 32) + 2 * 4 * (16 + 32)
