"""Vector-wise geometric transforms: spherical coordinates, weight norm, hypersphere.

Each treats the weight as a batch of vectors along `axis` (default 0: for a
`[d_in, d_out]` kernel, the d_in-vector feeding each output unit, the weight
normalization convention; use `axis=1` for rows, e.g. nGPT's normalization
along the embedding dimension of `fc_out`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, register
from reparam_jax.reparam.numerics import safe_norm


def _drop(names: tuple, axis: int) -> tuple:
  return tuple(n for i, n in enumerate(names) if i != axis)


def _none_at(names: tuple, axis: int) -> tuple:
  return tuple(None if i == axis else n for i, n in enumerate(names))


@jax.custom_jvp
def _atan2(y: Array, x: Array) -> Array:
  """atan2 with a finite gradient everywhere: 0 at (0, 0), and no underflow next to it.

  jnp's derivative (x dy − y dx)/(x² + y²) is 0/0 = NaN at the origin and also
  just off it, where x² + y² underflows (x = 1e-30 in float32, a weight vector
  next to a pole); the JVP below divides by s = max(|x|, |y|) first.
  """
  both_zero = (y == 0) & (x == 0)
  return jnp.where(both_zero, 0.0, jnp.arctan2(y, jnp.where(both_zero, 1.0, x)))


@_atan2.defjvp
def _atan2_jvp(primals, tangents):
  y, x = primals
  dy, dx = tangents
  s = jnp.maximum(jnp.abs(x), jnp.abs(y))
  nonzero = s > 0
  s = jnp.where(nonzero, s, 1.0)
  xs, ys = x / s, y / s  # in [-1, 1], one of them ±1 (both 0 at the origin)
  # The origin's denominator is made 1, not only its result 0: the reverse pass
  # multiplies by 1/den even where the result is discarded.
  den = jnp.where(nonzero, s * (jnp.square(xs) + jnp.square(ys)), 1.0)
  return _atan2(y, x), jnp.where(nonzero, (xs * dy - ys * dx) / den, 0.0)


def to_spherical(x_VxN: Array) -> tuple[Array, Array]:
  """Cartesian `[..., n]` → (radius `[...]`, angles `[..., n-1]`).

  φ_k = atan2(‖x_{k+1:}‖, x_k) ∈ [0, π] for k < n-1 and φ_{n-1} = atan2(x_n, x_{n-1})
  ∈ (-π, π].  atan2 (never arccos(x_k/‖x_{k:}‖)) keeps full precision near the
  poles, where arccos's derivative blows up; tail norms come from a reversed
  cumulative sum so small tails are not swamped by large heads.
  """
  n = x_VxN.shape[-1]
  sq = jnp.square(x_VxN)
  tail_sq = jnp.flip(jnp.cumsum(jnp.flip(sq, -1), -1), -1)  # ‖x_{k:}‖², k = 0..n-1
  pos = tail_sq > 0
  tail = jnp.where(pos, jnp.sqrt(jnp.where(pos, tail_sq, 1.0)), 0.0)
  radius = tail[..., 0]
  head = _atan2(tail[..., 1:n - 1], x_VxN[..., :n - 2])
  last = _atan2(x_VxN[..., n - 1], x_VxN[..., n - 2])
  return radius, jnp.concatenate([head, last[..., None]], -1)


def from_spherical(radius: Array, angles: Array, axis: int = -1) -> Array:
  """(radius, angles) → Cartesian: x_k = r·(∏_{j<k} sin φ_j)·cos φ_k, x_n = r·∏ sin φ_j.

  `angles` holds each vector's n-1 angles along `axis`; `radius` is shaped
  like `angles` without it.  The running product of sines is a `lax.scan`
  along that axis, one multiply per step over all the vectors at once:
  on XLA:CPU this is 3-4x faster, forward and backward, than `jnp.cumprod`,
  which lowers to an associative scan (log n rounds of strided slices and
  concatenations).  Its gradient multiplies by the stored prefix products
  (no division by a sine), so an angle on a pole gives no NaN.
  """
  angles_N1xV = jnp.moveaxis(angles, axis, 0)  # a no-op for kernels' default axis=0
  sin, cos = jnp.sin(angles_N1xV), jnp.cos(angles_N1xV)

  def multiply(prefix_V, sin_V):
    return prefix_V * sin_V, prefix_V  # carry ∏_{j<=k}, emit ∏_{j<k}

  product_V, prefix_N1xV = jax.lax.scan(multiply, jnp.ones_like(sin[0]), sin)
  x_NxV = jnp.concatenate([prefix_N1xV * cos, product_V[None]], 0)
  return jnp.moveaxis(radius[None] * x_NxV, 0, axis)


@dataclasses.dataclass(frozen=True)
class _Vectorwise(Transform):
  axis: int = 0

  def _ax(self, ndim: int) -> int:
    if not -ndim <= self.axis < ndim:
      raise UserError(f"{self.name}: axis={self.axis} out of range for a {ndim}-D weight")
    return self.axis % ndim

  def _vectors(self, w: Array) -> Array:
    return jnp.moveaxis(w, self._ax(w.ndim), -1)

  def _unvectors(self, x: Array, ndim: int) -> Array:
    return jnp.moveaxis(x, -1, self._ax(ndim))

  def check(self, shape):
    if not shape:
      raise UserError(f"{self.name} needs at least a 1-D weight")
    self._ax(len(shape))


@register
@dataclasses.dataclass(frozen=True)
class Spherical(_Vectorwise):
  """Each vector as a radius and n-1 hyperspherical angles; exact round trip.

  θ = {radius: weight shape without `axis`, angles: weight shape with `axis`
  of size n-1}.  The angle axis is left unsharded (n-1 rarely divides a mesh
  axis, and the cumprod runs along it); the other axes keep their names.
  """

  name: ClassVar[str] = "spherical"
  examples: ClassVar[tuple[str, ...]] = ("spherical", "spherical(axis=1)")
  keys: ClassVar[tuple[str, ...]] = ("radius", "angles")
  # Angles are not weights, and the radius carries the norm: neither is decayed.
  decayed: ClassVar[tuple[str, ...] | None] = ()

  def check(self, shape):
    super().check(shape)
    if shape[self._ax(len(shape))] < 2:
      raise UserError("spherical needs vectors of length >= 2 along `axis`")

  def from_dense(self, w, key=None):
    radius, angles = to_spherical(self._vectors(w))
    return {"radius": radius, "angles": self._unvectors(angles, w.ndim)}

  def apply(self, theta, rng=None):
    angles = theta["angles"]
    return from_spherical(theta["radius"], angles, axis=self._ax(angles.ndim))

  def leaf_axes(self, names):
    ax = self._ax(len(names))
    return {"radius": _drop(names, ax), "angles": _none_at(names, ax)}

  def dense_shape(self, theta):
    shape = list(theta["angles"].shape)
    shape[self._ax(len(shape))] += 1
    return tuple(shape)


@register
@dataclasses.dataclass(frozen=True)
class WeightNorm(_Vectorwise):
  """W = g · v/‖v‖ per vector (Salimans & Kingma 2016); θ = {g, v}."""

  name: ClassVar[str] = "weightnorm"
  examples: ClassVar[tuple[str, ...]] = ("weightnorm",)
  keys: ClassVar[tuple[str, ...]] = ("g", "v")
  decayed: ClassVar[tuple[str, ...] | None] = ("v",)  # the direction, not the norm g
  slots: ClassVar[tuple[str, ...]] = ("v",)

  def from_dense(self, w, key=None):
    ax = self._ax(w.ndim)
    return {"g": safe_norm(w, axis=ax), "v": w}

  def apply(self, theta, rng=None):
    v = theta["v"]
    ax = self._ax(v.ndim)
    norm = safe_norm(v, axis=ax, keepdims=True)
    # A zero direction stays zero instead of producing NaN.
    inv = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
    return v * inv * jnp.expand_dims(theta["g"], ax)

  def leaf_axes(self, names):
    return {"g": _drop(names, self._ax(len(names))), "v": names}

  def dense_shape(self, theta):
    return tuple(theta["v"].shape)


@register
@dataclasses.dataclass(frozen=True)
class Hypersphere(_Vectorwise):
  """W = scale · u with each u on the unit sphere, re-projected after every step (nGPT).

  The forward pass does no normalization (unlike weight norm): `post_update`
  restores ‖u‖ = 1 after the optimizer moved it off the sphere.  `scale` is
  per vector, frozen by default (nGPT keeps weights on the sphere and learns
  scalings elsewhere); `learn_scale=True` trains it.
  """

  name: ClassVar[str] = "hypersphere"
  examples: ClassVar[tuple[str, ...]] = ("hypersphere", "hypersphere(learn_scale=True)")
  keys: ClassVar[tuple[str, ...]] = ("direction", "scale")
  decayed: ClassVar[tuple[str, ...] | None] = ("direction",)
  learn_scale: bool = False

  def from_dense(self, w, key=None):
    ax = self._ax(w.ndim)
    norm = safe_norm(w, axis=ax, keepdims=True)
    return {"direction": w / jnp.where(norm > 0, norm, 1.0), "scale": jnp.squeeze(norm, ax)}

  def apply(self, theta, rng=None):
    u = theta["direction"]
    scale = theta["scale"] if self.learn_scale else jax.lax.stop_gradient(theta["scale"])
    return u * jnp.expand_dims(scale, self._ax(u.ndim))

  def post_update(self, theta):
    u = theta["direction"]
    norm = safe_norm(u, axis=self._ax(u.ndim), keepdims=True)
    return {**theta, "direction": u / jnp.where(norm > 0, norm, 1.0)}

  def trainable(self, theta):
    return {"direction": True, "scale": self.learn_scale}

  def leaf_axes(self, names):
    return {"direction": names, "scale": _drop(names, self._ax(len(names)))}

  def dense_shape(self, theta):
    return tuple(theta["direction"].shape)
