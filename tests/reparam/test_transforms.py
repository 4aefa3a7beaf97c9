"""Math of each transform: exactness, optimality, gradients, composition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reparam_jax.errors import UserError
from reparam_jax.reparam import TRANSFORMS, materialize
from reparam_jax.reparam.compose import SlotMapped, Wrapped, stages
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms.lora import LoRA, merge, unmerge
from reparam_jax.reparam.transforms.lowrank import LowRank, als_factors, svd_factors
from reparam_jax.reparam.transforms.spherical import (
  Hypersphere,
  Spherical,
  WeightNorm,
  from_spherical,
  to_spherical,
)
from reparam_jax.reparam.transforms.variational import Latent, Variational, gaussian_kl
from tests.reparam.specs import COMPOSITIONS, EXAMPLES, smooth

KEY = jax.random.key(0)


def _w(shape=(6, 5), seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _decaying(m=12, n=10, seed=0):
  """A matrix with singular values 2^-k: a clear gap at every rank."""
  ku, kv = jax.random.split(jax.random.key(seed))
  u, _ = jnp.linalg.qr(jax.random.normal(ku, (m, n)))
  v, _ = jnp.linalg.qr(jax.random.normal(kv, (n, n)))
  s = 2.0 ** -jnp.arange(n, dtype=jnp.float32)
  return (u * s) @ v.T, s


# --- low-rank ---------------------------------------------------------------

def test_full_rank_svd_reconstructs():
  w = _w((7, 5))
  t = LowRank(rank=5)
  np.testing.assert_allclose(materialize(t.apply(t.from_dense(w))), w, atol=1e-5)


def test_truncated_svd_error_is_dropped_singular_values():
  w, s = _decaying()
  for r in (1, 3, 6):
    u, v = svd_factors(w, r)
    err = jnp.linalg.norm(w - u @ v.T)
    np.testing.assert_allclose(err, jnp.linalg.norm(s[r:]), rtol=1e-4)


def test_als_reaches_svd_error():
  w, s = _decaying(16, 12, seed=1)
  r = 4
  svd_err = float(jnp.linalg.norm(s[r:]))
  u, v = als_factors(w, r, iters=30, key=jax.random.key(3))
  als_err = float(jnp.linalg.norm(w - u @ v.T))
  assert abs(als_err - svd_err) / svd_err < 1e-3
  t = LowRank(rank=r, method="als", als_iters=30)
  theta = t.from_dense(w, jax.random.key(4))
  assert float(jnp.linalg.norm(w - materialize(t.apply(theta)))) / svd_err - 1 < 1e-3


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_als_ends_with_the_least_squares_solve_for_v(iters):
  """After the sweeps, V is the exact LS solve given U's column space: ‖W − Q Qᵀ W‖
  (Q an orthonormal basis of U), the best any V can do for that U."""
  w = jax.random.normal(jax.random.key(5), (24, 20))
  u, v = als_factors(w, 4, iters=iters, key=jax.random.key(6))
  q, _ = jnp.linalg.qr(u)
  best = float(jnp.linalg.norm(w - q @ (q.T @ w)))
  assert float(jnp.linalg.norm(w - u @ v.T)) == pytest.approx(best, rel=1e-5)
  np.testing.assert_allclose(float(jnp.linalg.norm(u)), float(jnp.linalg.norm(v)), rtol=1e-4)


def test_lowrank_structured_matmul_and_init_scale():
  t = LowRank(rank=3)
  theta = t.from_dense(_w((8, 6)))
  x = _w((2, 4, 8), seed=1)
  np.testing.assert_allclose(t.apply(theta).left_matmul(x), x @ materialize(t.apply(theta)),
                             atol=1e-5)
  theta = LowRank(rank=16).init(KEY, (256, 192), jnp.float32, 0.02)
  w = materialize(LowRank(rank=16).apply(theta))
  assert 0.018 < float(jnp.std(w)) < 0.022


# --- spherical family ---------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1])
def test_spherical_round_trip(axis):
  w = _w((7, 5))
  t = Spherical(axis=axis)
  theta = t.from_dense(w)
  np.testing.assert_allclose(t.apply(theta), w, atol=1e-5)
  assert theta["angles"].shape == ((6, 5) if axis == 0 else (7, 4))


def test_spherical_poles_and_edge_cases():
  x = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -2.0, 0.0],
                 [3.0, -4.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
  r, a = to_spherical(x)
  np.testing.assert_allclose(from_spherical(r, a), x, atol=1e-6)
  # Gradients stay finite on and next to the poles, both directions of the map.
  g = jax.grad(lambda x: jnp.sum(from_spherical(*to_spherical(x)) ** 2))(x)
  assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_allclose(g, 2 * x, atol=1e-5)
  ga = jax.grad(lambda a: jnp.sum(from_spherical(r, a)))(a)
  assert np.isfinite(np.asarray(ga)).all()
  # n = 2 is polar coordinates.
  r2, a2 = to_spherical(jnp.array([[0.0, -1.0]]))
  np.testing.assert_allclose(a2, [[-np.pi / 2]], atol=1e-6)


def _from_spherical_cumprod(radius, angles_VxN1):
  """The formula as `jnp.cumprod` writes it: the scan in `from_spherical` must equal it."""
  sin, cos = jnp.sin(angles_VxN1), jnp.cos(angles_VxN1)
  prod = jnp.cumprod(sin, axis=-1)
  prefix = jnp.concatenate([jnp.ones_like(prod[..., :1]), prod[..., :-1]], -1)
  return radius[..., None] * jnp.concatenate([prefix * cos, prod[..., -1:]], -1)


@pytest.mark.parametrize("axis", [0, 1])
def test_spherical_values_and_gradients_equal_the_cumprod_formula(axis):
  """Angles anywhere (negative sines, exact poles 0 and π): same W, same gradients."""
  angles = jax.random.uniform(jax.random.key(0), (9, 7), minval=-4.0, maxval=4.0)
  angles = angles.at[2, 3].set(0.0).at[5, 0].set(jnp.pi).at[6, :].set(0.0)
  radius = jax.random.uniform(jax.random.key(1), (7,), minval=0.5, maxval=2.0)
  probe = jax.random.normal(jax.random.key(2), (10, 7))  # a fixed linear read-out of W
  t = Spherical(axis=axis)
  theta = {"radius": radius, "angles": angles if axis == 0 else angles.T}

  def reference(theta):
    a = theta["angles"] if axis == 1 else theta["angles"].T  # vectors along the last axis
    x = _from_spherical_cumprod(theta["radius"], a)
    return x.T if axis == 0 else x

  def loss(fn, theta):
    return jnp.sum(jnp.tanh(fn(theta)) * (probe if axis == 0 else probe.T))

  np.testing.assert_allclose(t.apply(theta), reference(theta), rtol=1e-6, atol=1e-6)
  got, want = (jax.grad(lambda th, f=f: loss(f, th))(theta) for f in (t.apply, reference))
  for key in ("radius", "angles"):
    assert np.isfinite(np.asarray(got[key])).all()
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x", [[1.0, 1e-30, 0.0, 0.0], [1.0, 1e-20, 1e-25, 0.0],
                               [1e-30, 0.0, 0.0, 0.0], [0.0, 1e-30, 0.0, -1e-30]])
def test_spherical_gradient_is_finite_just_off_a_pole(x):
  """x_k² underflows to 0 in float32 next to a pole; the angles' gradient must not be NaN."""
  x = jnp.asarray(x, jnp.float32)
  g_angles = jax.grad(lambda x: jnp.sum(to_spherical(x)[1]))(x)
  assert np.isfinite(np.asarray(g_angles)).all(), g_angles
  g = jax.grad(lambda x: jnp.sum(from_spherical(*to_spherical(x)) ** 2))(x)
  np.testing.assert_allclose(g, 2 * x, atol=1e-6)


def test_spherical_high_dim_round_trip():
  w = _w((1024, 3))
  t = Spherical()
  np.testing.assert_allclose(t.apply(t.from_dense(w)), w, atol=2e-5)


def test_weightnorm_and_hypersphere():
  w = _w((6, 4))
  for t in (WeightNorm(), Hypersphere(), WeightNorm(axis=1), Hypersphere(axis=1)):
    np.testing.assert_allclose(t.apply(t.from_dense(w)), w, atol=1e-5)
  t = Hypersphere()
  theta = t.from_dense(w)
  moved = {**theta, "direction": theta["direction"] * 1.7 + 0.1}
  proj = t.post_update(moved)
  np.testing.assert_allclose(jnp.linalg.norm(proj["direction"], axis=0), 1.0, rtol=1e-6)
  assert t.trainable(theta) == {"direction": True, "scale": False}


# --- LoRA ----------------------------------------------------------------------

def test_lora_starts_at_base_and_merge_unmerge():
  node = parse_spec("lora(rank=2, alpha=4)")
  w = _w((6, 5))
  theta = node.init_from(KEY, w)
  np.testing.assert_array_equal(materialize(node.apply(theta)), w)
  x = _w((3, 6), seed=2)
  np.testing.assert_allclose(node.apply(theta).left_matmul(x), x @ w, atol=1e-6)
  theta["lora_b"] = _w((2, 5), seed=3)
  lora = LoRA(rank=2, alpha=4)
  adapter = {k: theta[k] for k in ("lora_a", "lora_b")}
  merged = merge(lora, theta["base"], adapter)
  np.testing.assert_allclose(merged, materialize(node.apply(theta)), atol=1e-6)
  back = unmerge(lora, merged, adapter)
  np.testing.assert_allclose(back["base"], theta["base"], atol=1e-6)
  np.testing.assert_allclose(node.apply(theta).left_matmul(x), x @ merged, atol=1e-5)


# --- variational -----------------------------------------------------------------

def test_kl_closed_form_matches_monte_carlo():
  mu = jnp.array([0.3, -1.0, 0.05])
  sigma = jnp.array([0.2, 0.5, 1.5])
  prior = 0.7
  closed = gaussian_kl(mu, sigma, prior)
  eps = jax.random.normal(KEY, (200_000, 3))
  w = mu + sigma * eps
  log_q = -0.5 * eps**2 - jnp.log(sigma)
  log_p = -0.5 * (w / prior) ** 2 - jnp.log(prior)
  mc = jnp.mean(jnp.sum(log_q - log_p, -1))
  np.testing.assert_allclose(mc, closed, rtol=1e-2)


def test_variational_sampling_and_penalty_annealing():
  t = Variational(prior_std=0.5, sigma_ratio=0.1, kl_weight=2.0, anneal_steps=10)
  w = _w((5, 4))
  theta = t.from_dense(w)
  np.testing.assert_array_equal(t.apply(theta, None), w)
  s1, s2 = t.apply(theta, jax.random.key(1)), t.apply(theta, jax.random.key(2))
  assert not np.allclose(s1, s2)
  kl = gaussian_kl(theta["mu"], jax.nn.softplus(theta["rho"]), 0.5)
  np.testing.assert_allclose(t.penalty(theta, 5)["variational/kl"], 2.0 * 0.5 * kl, rtol=1e-6)
  np.testing.assert_allclose(t.penalty(theta, 50)["variational/kl"], 2.0 * kl, rtol=1e-6)
  theta = t.init(KEY, (300, 200), jnp.float32, 0.02)
  sample = t.apply(theta, jax.random.key(3))
  assert 0.019 < float(jnp.std(sample)) < 0.021


@pytest.mark.parametrize("kw", [dict(), dict(decoder="fixed"), dict(offset=True)])
def test_latent(kw):
  t = Latent(dim=3, dim_out=2, **kw)
  w = _w((6, 5))
  theta = t.from_dense(w)
  k = t.apply(theta, None)
  x = _w((2, 6), seed=4)
  np.testing.assert_allclose(k.left_matmul(x), x @ k.dense(), atol=1e-5)
  if kw.get("offset"):
    np.testing.assert_allclose(k.dense(), w, atol=1e-6)
  elif kw.get("decoder") != "fixed":  # best rank-2 fit
    s = jnp.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(jnp.linalg.norm(w - k.dense()), jnp.linalg.norm(s[2:]), rtol=1e-4)
  assert set(t.penalty(theta, 0)) == {"latent/kl"}


@pytest.mark.parametrize("kw", [dict(), dict(decoder="fixed"), dict(offset=True),
                                dict(offset=True, decoder="fixed")])
@pytest.mark.parametrize("start", ["init", "from_dense"])
def test_latent_noise_on_w_is_sigma_ratio_of_its_rms(kw, start):
  """`sigma_ratio` means one thing: the RMS of W's sampling noise over W's RMS, whether
  the latent starts fresh or from a weight (fresh offset runs had 1/√(mn/k²) of it)."""
  t = Latent(dim=4, sigma_ratio=0.1, **kw)
  std = 0.02
  theta = (t.init(KEY, (64, 48), jnp.float32, std) if start == "init"
           else t.from_dense(std * jax.random.normal(jax.random.key(9), (64, 48))))
  mean = t.apply(theta, None).dense()
  samples = jnp.stack([t.apply(theta, jax.random.key(i)).dense() for i in range(64)])
  noise_rms = float(jnp.sqrt(jnp.mean(jnp.square(samples - mean))))
  w_rms = float(jnp.sqrt(jnp.mean(jnp.square(mean))))
  assert noise_rms / w_rms == pytest.approx(0.1, rel=0.2)
  if start == "init":  # the sampled weight has the dense init's scale
    assert float(jnp.sqrt(jnp.mean(jnp.square(samples[0])))) == pytest.approx(std, rel=0.15)


def test_latent_learned_conversion_of_a_latent_wider_than_the_matrix():
  """k1 ≤ d_in and k2 ≤ d_out pass the shape check; min(d_in, d_out) < k must not crash."""
  w = _w((8, 6))
  t = Latent(dim=7, dim_out=5)
  theta = t.from_dense(w)
  assert theta["dec_in"].shape == (8, 7) and theta["dec_out"].shape == (5, 6)
  s = jnp.linalg.svd(w, compute_uv=False)  # the best rank-5 fit
  np.testing.assert_allclose(jnp.linalg.norm(w - t.apply(theta).dense()),
                             jnp.linalg.norm(s[5:]), rtol=1e-4)


# --- gradients (float64, numerical) --------------------------------------------------

SPECS = smooth(EXAMPLES + COMPOSITIONS)  # every registered transform (tests/reparam/specs.py)


def test_every_registered_transform_has_example_specs():
  for name, cls in TRANSFORMS.items():
    assert cls.examples, f"transform {name!r} lists no examples: the generic tests skip it"
    for spec in cls.examples:  # the transform itself, or a stack that ends with it
      assert list(stages(parse_spec(spec)))[-1].name == name


def _randomize_lora_b(theta):
  """Every LoRA B in θ (at any depth of a stack) set to a random non-zero value."""
  for k, v in theta.items():
    if k == "lora_b":
      theta[k] = jax.random.normal(jax.random.key(5), v.shape, v.dtype)
    elif isinstance(v, dict):
      _randomize_lora_b(v)


@pytest.mark.parametrize("spec", SPECS)
def test_gradients_numerically(spec, x64):
  node = parse_spec(spec)
  w = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
  theta = node.from_dense(w, jax.random.key(2))
  if "lora" in spec:  # make the adapter path non-trivial
    _randomize_lora_b(theta)
  x = jax.random.normal(jax.random.key(3), (2, 4), jnp.float64)
  mask = node.trainable(theta)
  flat, treedef = jax.tree.flatten(theta)
  flags = jax.tree.leaves(jax.tree.map(lambda _, m: m, theta, mask)) \
      if not isinstance(mask, bool) else [mask] * len(flat)
  train_idx = [i for i, f in enumerate(flags) if f]
  rng = jax.random.key(7) if spec.startswith(("variational", "latent")) or "variational" in spec \
      else None

  def loss(*train_leaves):
    leaves = list(flat)
    for i, v in zip(train_idx, train_leaves):
      leaves[i] = v
    k = node.apply(jax.tree.unflatten(treedef, leaves), rng)
    y = k.left_matmul(x) if hasattr(k, "left_matmul") else x @ k
    return jnp.sum(jnp.sin(y)) + sum(node.penalty(jax.tree.unflatten(treedef, leaves), 3).values(), 0.0)

  check_grads(loss, tuple(flat[i] for i in train_idx), order=1, modes=("rev",), atol=1e-5,
              rtol=1e-5, eps=1e-6)


# --- composition ----------------------------------------------------------------------

def test_stack_equals_hand_composition():
  w = _w((6, 5))
  node = parse_spec("spherical|lora(rank=2, alpha=2)")
  assert isinstance(node, Wrapped)
  theta = node.from_dense(w, KEY)
  theta["lora_b"] = _w((2, 5), seed=9)
  by_hand = Spherical().apply(theta["base"]) + 1.0 * theta["lora_a"] @ theta["lora_b"]
  np.testing.assert_allclose(materialize(node.apply(theta)), by_hand, atol=1e-5)

  node = parse_spec("lowrank(rank=3)|spherical")
  assert isinstance(node, SlotMapped)
  theta = node.from_dense(w)
  u, v = Spherical().apply(theta["u"]), Spherical().apply(theta["v"])
  np.testing.assert_allclose(materialize(node.apply(theta)), u @ v.T, atol=1e-5)
  u, v = svd_factors(w, 3)
  np.testing.assert_allclose(materialize(node.apply(theta)), u @ v.T, atol=1e-5)

  node = parse_spec("lowrank(rank=3)|variational(kl_weight=1.0)")
  theta = node.from_dense(w)
  terms = node.penalty(theta, 0)
  by_hand = sum(Variational(kl_weight=1.0).penalty(theta[s], 0)["variational/kl"] for s in "uv")
  np.testing.assert_allclose(terms["variational/kl"], by_hand, rtol=1e-6)
  assert node.trainable(theta) == {"u": {"mu": True, "rho": True}, "v": {"mu": True, "rho": True}}


@pytest.mark.parametrize("rank", [0, -1, 9])
def test_lora_rank_outside_the_matrix_is_a_user_error(rank):
  from reparam_jax.errors import UserError
  from reparam_jax.reparam.transforms.lora import LoRA
  with pytest.raises(UserError, match="lora: rank must be in"):
    LoRA(rank=rank).check((8, 16))


def test_a_stage_after_lora_is_a_clear_error():
  """Bayesian adapters are not supported (docs/reparam.md, composition): say so."""
  with pytest.raises(UserError, match="'variational' cannot follow"):
    parse_spec("lora(rank=2)|variational")
