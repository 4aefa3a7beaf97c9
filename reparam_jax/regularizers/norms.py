"""The penalty functions themselves: pure, jit-traceable, float32 scalars.

Each takes one weight (or a low-rank factor pair) and returns an *unweighted*
scalar; `reparam_jax.regularizers.penalty` multiplies by the configured
coefficient.  Shapes follow the project's kernels, `W_IxO` with `y = x W`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def l1(w: Array) -> Array:
  """Σ|w|.  Its subgradient sign(w) pushes every entry towards 0 at the same rate."""
  return jnp.sum(jnp.abs(w.astype(jnp.float32)))


def l2(w: Array) -> Array:
  """½ Σ w².  The ½ makes the gradient `w`, so `l2(λ)` under SGD is weight decay λ."""
  w = w.astype(jnp.float32)
  return 0.5 * jnp.sum(w * w)


def nuclear_exact(w_IxO: Array) -> Array:
  """‖W‖_* = Σ σᵢ(W), by SVD.  Gradient U Vᵀ (the subgradient at rank deficiency)."""
  return jnp.sum(jnp.linalg.svd(w_IxO.astype(jnp.float32), compute_uv=False))


def nuclear_factored(u_IxR: Array, v_OxR: Array) -> Array:
  """½(‖U‖²_F + ‖V‖²_F) for W = U Vᵀ: an upper bound on ‖W‖_*.

  By AM–GM and ‖UVᵀ‖_* ≤ ‖U‖_F‖V‖_F the bound holds for every factorization,
  with equality at the balanced SVD one (U = U_r√S, V = V_r√S).  Minimizing
  it over U, V therefore minimizes the nuclear norm (Srebro et al. 2005)
  without an SVD, and it costs r(I + O) multiply-adds instead of O(I·O·min).
  """
  u, v = u_IxR.astype(jnp.float32), v_OxR.astype(jnp.float32)
  return 0.5 * (jnp.sum(u * u) + jnp.sum(v * v))


def _gram_minus_identity(w_IxO: Array) -> Array:
  """WᵀW − I on the smaller side: orthonormal columns if I ≥ O, rows otherwise.

  A non-square W cannot have both; the smaller Gram asks for the achievable
  one (a semi-orthogonal matrix).
  """
  w = w_IxO.astype(jnp.float32)
  gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
  return gram - jnp.eye(gram.shape[0], dtype=gram.dtype)


def orthogonality_frobenius(w_IxO: Array) -> Array:
  """‖WᵀW − I‖²_F (soft orthogonality): 0 exactly when W is (semi-)orthogonal."""
  d = _gram_minus_identity(w_IxO)
  return jnp.sum(d * d)


def orthogonality_spectral(w_IxO: Array, iters: int = 10) -> Array:
  """σ_max(WᵀW − I), SRIP's spectral restricted isometry term (Bansal et al. 2018).

  Estimated by `iters` steps of power iteration from a fixed start vector
  (jit-stable, no state to carry); the vector is held constant for the
  gradient, as in spectral normalization, so the gradient is that of
  ‖(WᵀW − I) v‖ at the estimated top eigenvector v.  A start orthogonal to the
  top eigenvector underestimates; with a dense pseudo-random start that has
  probability zero.
  """
  d = _gram_minus_identity(w_IxO)
  v = jax.random.normal(jax.random.key(0), (d.shape[0],), jnp.float32)

  def step(_, v):
    v = d @ v
    return v / (jnp.linalg.norm(v) + 1e-12)

  v = jax.lax.stop_gradient(jax.lax.fori_loop(0, iters, step, v / jnp.linalg.norm(v)))
  return jnp.linalg.norm(d @ v)
