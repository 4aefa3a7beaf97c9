"""Variational weights: the VAE reparameterization trick applied to parameters.

`variational`: a mean-field Gaussian posterior per weight (Bayes by Backprop,
Blundell et al. 2015): W = μ + σ·ε, σ = softplus(ρ), ε ~ N(0, 1) drawn from
the `'reparam'` rng stream on every step (only when the caller passes that
rng, i.e. in the train step; otherwise W = μ).  The penalty is the closed-form
KL(q ‖ p) to the prior p = N(0, σ_p²):

  KL = Σ_ij [ log(σ_p/σ_ij) + (σ_ij² + μ_ij²) / (2σ_p²) − ½ ]

scaled by `kl_weight` (the ELBO's 1/N for N training tokens) and optionally
annealed linearly from 0 over `anneal_steps` (Bowman et al. 2016).

`latent`: the VAE picture proper: a low-dimensional latent z = μ_z + σ_z·ε
is decoded linearly into the weight, W = [offset +] D_in z D_out, with D_in
[d_in, k_in] and D_out [k_out, d_out] learned or fixed (random orthonormal,
as in intrinsic-dimension experiments, Li et al. 2018).  The decoder is
linear in z (vec W = (D_outᵀ ⊗ D_in) vec z) but factored, so it costs
k(d_in + d_out) parameters instead of k·d_in·d_out and multiplies as
((x D_in) z) D_out without forming W.  KL is on z only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, register
from reparam_jax.reparam.kernels import LatentKernel
from reparam_jax.reparam.numerics import need_2d, rms, softplus_inv


def gaussian_kl(mu: Array, sigma: Array, prior_std: float) -> Array:
  """Σ KL(N(μ, σ²) ‖ N(0, σ_p²)), summed over all entries, in float32."""
  mu, sigma = mu.astype(jnp.float32), sigma.astype(jnp.float32)
  var_ratio = jnp.square(sigma / prior_std)
  return 0.5 * jnp.sum(var_ratio + jnp.square(mu / prior_std) - 1.0 - jnp.log(var_ratio))


def _anneal(step, steps: int) -> Array:
  if steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / steps)


def _sample(mu: Array, rho: Array, rng: Array | None) -> Array:
  if rng is None:
    return mu
  sigma = jax.nn.softplus(rho)
  return mu + sigma * jax.random.normal(rng, mu.shape, mu.dtype)


@dataclasses.dataclass(frozen=True)
class _KL(Transform):
  prior_std: float = 0.1
  sigma_ratio: float = 0.1  # initial noise on W: its RMS as a fraction of W's RMS
  kl_weight: float = 1e-6
  anneal_steps: int = 0

  def check(self, shape):
    if self.prior_std <= 0 or not 0 < self.sigma_ratio < 1:
      raise UserError(f"{self.name}: need prior_std > 0 and 0 < sigma_ratio < 1")

  def _kl_terms(self, mu: Array, rho: Array, step) -> dict[str, Array]:
    kl = gaussian_kl(mu, jax.nn.softplus(rho), self.prior_std)
    return {f"{self.name}/kl": self.kl_weight * _anneal(step, self.anneal_steps) * kl}


@register
@dataclasses.dataclass(frozen=True)
class Variational(_KL):
  """θ = {mu, rho}, both shaped and sharded like the weight."""

  name: ClassVar[str] = "variational"
  examples: ClassVar[tuple[str, ...]] = ("variational", "variational(anneal_steps=10)")
  keys: ClassVar[tuple[str, ...]] = ("mu", "rho")
  # Never ρ: decay pulls it to 0, i.e. σ = softplus(ρ) up towards softplus(0) = 0.69.
  decayed: ClassVar[tuple[str, ...] | None] = ("mu",)

  def init(self, key, shape, dtype, std):
    # Var[W] = Var[μ] + σ₀² = std²: shrink μ's init so the sampled weight has the dense scale.
    sigma0 = self.sigma_ratio * std
    mu = jnp.sqrt(1.0 - self.sigma_ratio**2) * std * jax.random.normal(key, shape, dtype)
    return {"mu": mu, "rho": jnp.full(shape, softplus_inv(jnp.maximum(sigma0, 1e-8)), dtype)}

  def from_dense(self, w, key=None):
    sigma0 = jnp.maximum(self.sigma_ratio * rms(w), 1e-8)
    return {"mu": w, "rho": jnp.full(w.shape, softplus_inv(sigma0), w.dtype)}

  def apply(self, theta, rng=None):
    return _sample(theta["mu"], theta["rho"], rng)

  def penalty(self, theta, step):
    return self._kl_terms(theta["mu"], theta["rho"], step)

  def leaf_axes(self, names):
    return {"mu": names, "rho": names}

  def dense_shape(self, theta):
    return tuple(theta["mu"].shape)


def _orthonormal(key: Array, rows: int, cols: int, dtype) -> Array:
  """A rows×cols matrix with orthonormal columns (rows >= cols) or rows."""
  tall = rows >= cols
  q, _ = jnp.linalg.qr(jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32))
  return (q if tall else q.T).astype(dtype)


@register
@dataclasses.dataclass(frozen=True)
class Latent(_KL):
  """θ = {z_mu, z_rho: [k_in, k_out], dec_in: [d_in, k_in], dec_out: [k_out, d_out]
  (+ offset: [d_in, d_out], frozen, when `offset=True`)}.

  Without an offset the weight has rank ≤ min(k_in, k_out).
  """

  name: ClassVar[str] = "latent"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = (
      "latent(dim=2)", "latent(dim=2, decoder=fixed, offset=True)")
  decayed: ClassVar[tuple[str, ...] | None] = ("z_mu", "dec_in", "dec_out")  # not z_ρ
  dim: int = 8  # k_in
  dim_out: int = 0  # k_out; 0 = dim
  decoder: str = "learned"  # or "fixed"
  offset: bool = False

  @property
  def keys(self):  # type: ignore[override]
    base = ("z_mu", "z_rho", "dec_in", "dec_out")
    return base + ("offset",) if self.offset else base

  def _dims(self) -> tuple[int, int]:
    return self.dim, self.dim_out or self.dim

  def check(self, shape):
    super().check(shape)
    need_2d("latent", shape)
    k1, k2 = self._dims()
    if k1 > shape[0] or k2 > shape[1] or min(k1, k2) < 1:
      raise UserError(f"latent: dims ({k1}, {k2}) must be in [1, {tuple(shape)}]")
    if self.decoder not in ("learned", "fixed"):
      raise UserError(f"latent: decoder must be 'learned' or 'fixed', got {self.decoder!r}")

  def _decoders(self, key, m, n, dtype):
    k1, k2 = self._dims()
    ka, kb = jax.random.split(key)
    return _orthonormal(ka, m, k1, dtype), _orthonormal(kb, k2, n, dtype)

  def init(self, key, shape, dtype, std):
    m, n = shape
    k1, k2 = self._dims()
    kd, kz, ko = jax.random.split(key, 3)
    dec_in, dec_out = self._decoders(kd, m, n, dtype)
    theta = {"dec_in": dec_in, "dec_out": dec_out}
    if self.offset:
      theta["offset"] = std * jax.random.normal(ko, shape, dtype)
      # Start at the offset; z explores around it.  Orthonormal decoders shrink
      # z's noise by √(k1·k2/(m·n)) on W, so this puts sigma_ratio·std of noise on W,
      # as converting a weight of RMS std does (`from_dense`).
      z_std = self.sigma_ratio * std * (m * n / (k1 * k2)) ** 0.5
      theta["z_mu"] = jnp.zeros((k1, k2), dtype)
    else:
      # Orthonormal decoders: Var[W_ij] = Var[z]·k1·k2/(m·n); match std².
      z_std = std * (m * n / (k1 * k2)) ** 0.5
      theta["z_mu"] = jnp.sqrt(1 - self.sigma_ratio**2) * z_std * jax.random.normal(
          kz, (k1, k2), dtype)
      z_std = self.sigma_ratio * z_std
    theta["z_rho"] = jnp.full((k1, k2), softplus_inv(jnp.maximum(z_std, 1e-8)), dtype)
    return theta

  def from_dense(self, w, key=None):
    self.check(w.shape)
    m, n = w.shape
    k1, k2 = self._dims()
    key = key if key is not None else jax.random.key(0)
    if self.offset:
      dec_in, dec_out = self._decoders(key, m, n, w.dtype)
      z_mu = jnp.zeros((k1, k2), w.dtype)
      extra = {"offset": w}
      z_scale = rms(w) * (m * n / (k1 * k2)) ** 0.5
    elif self.decoder == "fixed":
      # Orthonormal decoders: the least-squares z is the projection D_inᵀ W D_outᵀ.
      dec_in, dec_out = self._decoders(key, m, n, w.dtype)
      z_mu = dec_in.T @ w @ dec_out.T
      extra, z_scale = {}, rms(z_mu)
    else:
      # Learned decoders: the truncated SVD is the best rank-min(k) fit.  A latent
      # wider than min(m, n) (allowed: k1 ≤ m, k2 ≤ n) takes the full bases, its
      # extra directions starting at z = 0.
      u, s, vt = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=max(k1, k2) > min(m, n))
      k = min(k1, k2, s.shape[0])
      dec_in, dec_out = u[:, :k1].astype(w.dtype), vt[:k2].astype(w.dtype)
      z_mu = jnp.zeros((k1, k2), w.dtype).at[jnp.arange(k), jnp.arange(k)].set(
          s[:k].astype(w.dtype))
      extra, z_scale = {}, rms(z_mu)
    sigma0 = jnp.maximum(self.sigma_ratio * z_scale, 1e-8)
    return {"z_mu": z_mu, "z_rho": jnp.full((k1, k2), softplus_inv(sigma0), w.dtype),
            "dec_in": dec_in, "dec_out": dec_out, **extra}

  def apply(self, theta, rng=None):
    z = _sample(theta["z_mu"], theta["z_rho"], rng)
    dec_in, dec_out = theta["dec_in"], theta["dec_out"]
    if self.decoder == "fixed":
      dec_in, dec_out = jax.lax.stop_gradient(dec_in), jax.lax.stop_gradient(dec_out)
    offset = jax.lax.stop_gradient(theta["offset"]) if self.offset else None
    return LatentKernel(dec_in, z, dec_out, offset)

  def penalty(self, theta, step):
    return self._kl_terms(theta["z_mu"], theta["z_rho"], step)

  def trainable(self, theta):
    learned = self.decoder == "learned"
    out = {"z_mu": True, "z_rho": True, "dec_in": learned, "dec_out": learned}
    if self.offset:
      out["offset"] = False
    return out

  def leaf_axes(self, names):
    out = {"z_mu": (None, None), "z_rho": (None, None), "dec_in": (names[0], None),
           "dec_out": (None, names[1])}
    if self.offset:
      out["offset"] = names
    return out

  def dense_shape(self, theta):
    return (theta["dec_in"].shape[0], theta["dec_out"].shape[1])

  def flops(self, theta):
    (m, k1), (k2, n) = theta["dec_in"].shape, theta["dec_out"].shape
    return 2 * (m * k1 + k1 * k2 + k2 * n) + (2 * m * n if self.offset else 0)
