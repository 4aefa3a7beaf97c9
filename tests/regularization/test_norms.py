"""The penalty functions against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.regularizers import norms
from reparam_jax.reparam.transforms.lowrank import svd_factors


def _rand(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_l1_l2_values_and_gradients():
  w = _rand((5, 3))
  assert float(norms.l1(w)) == pytest.approx(float(np.abs(np.asarray(w)).sum()), rel=1e-6)
  assert float(norms.l2(w)) == pytest.approx(0.5 * float((np.asarray(w) ** 2).sum()), rel=1e-6)
  np.testing.assert_allclose(jax.grad(norms.l2)(w), w, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(norms.l1)(w), np.sign(w))


@pytest.mark.parametrize("shape", [(8, 8), (12, 5), (4, 9)])
def test_nuclear_exact_is_sum_of_singular_values(shape):
  w = _rand(shape, 1)
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  assert float(norms.nuclear_exact(w)) == pytest.approx(s.sum(), rel=1e-5)
  # Its gradient is U Vᵀ (distinct, non-zero singular values here).
  u, _, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
  np.testing.assert_allclose(jax.grad(norms.nuclear_exact)(w), u @ vt, atol=1e-4)


def test_factored_bound_is_above_exact_and_tight_at_balanced_svd():
  w = _rand((10, 6), 2)
  exact = float(norms.nuclear_exact(w))
  for seed in range(5):  # arbitrary factorizations of other matrices: bound ≥ their norm
    u, v = _rand((10, 3), 10 + seed), _rand((6, 3), 20 + seed)
    assert float(norms.nuclear_factored(u, v)) >= float(norms.nuclear_exact(u @ v.T)) - 1e-4
  # An unbalanced factorization of the same W: strictly above.
  u, v = svd_factors(w, 6)
  assert float(norms.nuclear_factored(2 * u, v / 2)) > exact + 1e-2
  # The balanced SVD factorization: equal.
  assert float(norms.nuclear_factored(u, v)) == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("shape", [(8, 8), (16, 4), (4, 16)])
def test_orthogonality_zero_for_orthogonal_and_positive_otherwise(shape):
  q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(max(shape), min(shape))))
  q = jnp.asarray(q if shape[0] >= shape[1] else q.T, jnp.float32)
  assert float(norms.orthogonality_frobenius(q)) == pytest.approx(0.0, abs=1e-9 + 1e-5)
  assert float(norms.orthogonality_spectral(q)) == pytest.approx(0.0, abs=1e-5)
  w = _rand(shape, 4) * 0.3
  assert float(norms.orthogonality_frobenius(w)) > 0.1
  assert float(norms.orthogonality_spectral(w)) > 0.1


def test_orthogonality_values_match_definitions():
  w = np.asarray(_rand((12, 5), 5), np.float64) * 0.5
  d = w.T @ w - np.eye(5)
  assert float(norms.orthogonality_frobenius(jnp.asarray(w, jnp.float32))) == pytest.approx(
      (d ** 2).sum(), rel=1e-4)
  # SRIP's term: the spectral norm of WᵀW − I (symmetric: the largest |eigenvalue|).
  top = np.abs(np.linalg.eigvalsh(d)).max()
  got = float(norms.orthogonality_spectral(jnp.asarray(w, jnp.float32), iters=50))
  assert got == pytest.approx(top, rel=1e-3)
  # Its gradient is finite and lowers the penalty.
  wj = jnp.asarray(w, jnp.float32)
  g = jax.grad(lambda x: norms.orthogonality_spectral(x, 50))(wj)
  assert np.all(np.isfinite(g))
  assert float(norms.orthogonality_spectral(wj - 1e-2 * g, 50)) < got
