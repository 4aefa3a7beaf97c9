"""Low-rank factorization `W = U Vᵀ` (rank r), from scratch, by SVD or by ALS."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, positive_int, register
from reparam_jax.reparam.kernels import LowRankKernel
from reparam_jax.reparam.numerics import need_2d


def svd_factors(w_MxN: Array, rank: int) -> tuple[Array, Array]:
  """Balanced truncated SVD: U = U_r √S_r, V = V_r √S_r (Eckart–Young optimum).

  Splitting √S into both factors gives them equal norms, which keeps their
  gradients on the same scale when training continues from here.
  """
  u, s, vt = jnp.linalg.svd(w_MxN.astype(jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return ((u[:, :rank] * root).astype(w_MxN.dtype), (vt[:rank].T * root).astype(w_MxN.dtype))


def als_factors(w_MxN: Array, rank: int, iters: int, key: Array) -> tuple[Array, Array]:
  """Alternating least squares from a random start (the seeds' algorithm).

  Each half step is the exact least-squares solve of min‖W − U Vᵀ‖_F for one
  factor with the other fixed: U = W V (VᵀV)⁻¹.  Writing V = Q R, that is
  U = W Q R⁻ᵀ, and since only the product U Vᵀ = W Q Qᵀ matters we carry the
  orthonormal Q instead of forming the Gram matrix VᵀV, whose condition number
  is squared and (the columns all drift towards the top singular vector) blows
  up in float32.  In exact arithmetic these are the seeds' ALS iterates; they
  converge to the rank-r SVD error at rate (σ_{r+1}/σ_r)² per sweep.
  """
  w = w_MxN.astype(jnp.float32)
  n = w.shape[1]
  q_v, _ = jnp.linalg.qr(jax.random.normal(key, (n, rank), jnp.float32))

  def sweep(_, q_v):
    q_u, _ = jnp.linalg.qr(w @ q_v)  # U-step: column space of W V
    q_v, _ = jnp.linalg.qr(w.T @ q_u)  # V-step: column space of Wᵀ U
    return q_v

  q_v = jax.lax.fori_loop(0, iters, sweep, q_v)
  q_u, _ = jnp.linalg.qr(w @ q_v)
  # Final LS solve for V given U = q_u: min_V ‖W − q_u Vᵀ‖ is Vᵀ = q_uᵀ W (q_u is
  # orthonormal), i.e. W ≈ q_u q_uᵀ W.  (Projecting on both sides, q_uᵀ W q_v,
  # would also restrict the row space to q_v's and fit worse after few sweeps.)
  # Then balance via the SVD of the small r×n core: same product, equal factor
  # norms as in `svd_factors`.
  core = q_u.T @ w  # [r, n]
  a, s, bt = jnp.linalg.svd(core, full_matrices=False)
  root = jnp.sqrt(s)
  u = (q_u @ a) * root
  v = bt.T * root
  return u.astype(w_MxN.dtype), v.astype(w_MxN.dtype)


@register
@dataclasses.dataclass(frozen=True)
class LowRank(Transform):
  """θ = {u: [d_in, r], v: [d_out, r]}; apply gives a structured `(x u) vᵀ` kernel."""

  name: ClassVar[str] = "lowrank"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = ("lowrank(rank=2)", "lowrank(rank=2, method=als)")
  keys: ClassVar[tuple[str, ...]] = ("u", "v")
  slots: ClassVar[tuple[str, ...]] = ("u", "v")
  rank: int = 8
  method: str = "svd"  # from_dense: "svd" or "als"
  als_iters: int = 100

  def arg_problems(self):
    return positive_int("rank", self.rank)

  def check(self, shape):
    need_2d("lowrank", shape)
    if not 1 <= self.rank <= min(shape):
      raise UserError(f"lowrank: rank={self.rank} must be in [1, min{tuple(shape)}]")
    if self.method not in ("svd", "als"):
      raise UserError(f"lowrank: method must be 'svd' or 'als', got {self.method!r}")

  def init(self, key, shape, dtype, std):
    # Gaussian factors with Var[(U Vᵀ)_ij] = r σ_u² σ_v² = std²; balanced σ_u = σ_v.
    # No SVD of a random dense matrix: that would cost O(mn·min(m,n)) at init.
    m, n = shape
    sigma = (std**2 / self.rank) ** 0.25
    ku, kv = jax.random.split(key)
    return {"u": sigma * jax.random.normal(ku, (m, self.rank), dtype),
            "v": sigma * jax.random.normal(kv, (n, self.rank), dtype)}

  def from_dense(self, w, key=None):
    self.check(w.shape)
    if self.method == "svd":
      u, v = svd_factors(w, self.rank)
    else:
      u, v = als_factors(w, self.rank, self.als_iters,
                         key if key is not None else jax.random.key(0))
    return {"u": u, "v": v}

  def apply(self, theta, rng=None):
    return LowRankKernel(theta["u"], theta["v"])

  def leaf_axes(self, names):
    return {"u": (names[0], None), "v": (names[1], None)}

  def dense_shape(self, theta):
    return (theta["u"].shape[0], theta["v"].shape[0])

  def flops(self, theta):
    (m, r), n = theta["u"].shape, theta["v"].shape[0]
    return 2 * r * (m + n)
