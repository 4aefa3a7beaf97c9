"""Quantization: fake quantization for QAT (`quant`) and int storage for PTQ (`qweight`).

Symmetric, per output channel: for a `[d_in, d_out]` kernel each column j has
a scale s_j and the integer grid {−q, …, q} with q = 2^(bits−1) − 1 (127 for
int8, 7 for int4; −2^(bits−1) is left out so the grid is symmetric and 0 is
exact, which keeps pruned zeros zero).

* `quant(bits=8, scale='max'|'learned', act_bits=0)`: W = s·round(clip(w/s, −q, q))
  with a straight-through estimator: ∂W/∂w = 1 inside the clip range, 0
  outside.  `scale='max'` sets s = max_i |w_ij| / q each step (nothing is
  clipped; s is a statistic, so no gradient flows into it).  `scale='learned'`
  is LSQ (Esser et al. 2020): s is a parameter initialised at the paper's
  2⟨|w|⟩/√q (per channel: the mean over the reduced axis), whose gradient is
  round(w/s) − w/s inside the range and ±q outside, scaled by 1/√(N·q).  With `act_bits > 0` the kernel reaching the project `Dense` also
  fake-quantizes its input x per token (dynamic max scale, STE) inside
  `left_matmul`, so activation quantization needs no model change.
* `qweight(bits=8)`: θ = {q: int8 [d_in, d_out], scale: f32 [d_out]}, the
  post-training storage form: the checkpoint really holds int8 arrays.
  apply dequantizes.  Not trainable (integers have no gradient): train with
  `quant` and convert (`reparam_jax.compress`), or train an adapter on it
  (`qweight|lora`, a frozen int8 base; initialized from scratch it stores the
  model's own init sample quantized).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, register
from reparam_jax.reparam.kernels import materialize, matmul
from reparam_jax.reparam.numerics import shape_of


def qmax(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def max_scale(w: Array, bits: int, axis: int = 0) -> Array:
  """Per-channel scale s = max|w| / q over `axis` (kept dims dropped); never 0."""
  s = jnp.max(jnp.abs(jax.lax.stop_gradient(w)), axis=axis) / qmax(bits)  # a statistic
  # One ulp up: q·s must not round below max|w|, or the largest entry would be clipped.
  s = jnp.nextafter(s, jnp.full_like(s, jnp.inf))
  return jnp.where(s > 0, s, jnp.ones_like(s))


def lsq_init_scale(w: Array, bits: int, axis: int = 0) -> Array:
  """LSQ's initial step size (Esser et al. 2020, §2.1): 2⟨|w|⟩/√q, per channel; never 0."""
  s = 2.0 * jnp.mean(jnp.abs(w.astype(jnp.float32)), axis=axis) / jnp.sqrt(float(qmax(bits)))
  return jnp.where(s > 0, s, jnp.ones_like(s))


def fake_quant(w: Array, scale: Array, bits: int, axis: int = 0) -> Array:
  """s·round(clip(w/s, −q, q)); gradient 1 (w.r.t. w) inside the range, 0 outside."""
  q = qmax(bits)
  s = jnp.expand_dims(scale, axis)
  x = jnp.clip(w / s, -q, q)
  # Written so ∂/∂w is exactly 1 inside (0 outside) and ∂/∂s is LSQ's
  # round(x) − x inside (±q outside); the value is s·round(x).  The range is
  # closed: the largest |w| sits on the bound q·s whenever max_scale's ulp is
  # lost in the product, and `jnp.clip` splits a tie's gradient (½ in jax
  # 0.10 and 0.12, 1 in 0.6), so the select is explicit.
  bound = q * s
  clipped = jnp.where(jnp.abs(w) <= bound, w, jnp.sign(w) * bound)
  return clipped + s * jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(w: Array, bits: int, axis: int = 0) -> tuple[Array, Array]:
  """(int8 values, f32 scales) of the symmetric per-channel max quantization."""
  s = max_scale(w.astype(jnp.float32), bits, axis)
  q = jnp.round(jnp.clip(w / jnp.expand_dims(s, axis), -qmax(bits), qmax(bits)))
  return q.astype(jnp.int8), s.astype(jnp.float32)


def dequantize(q: Array, scale: Array, axis: int = 0, dtype: Any = jnp.float32) -> Array:
  return (q.astype(jnp.float32) * jnp.expand_dims(scale, axis)).astype(dtype)


def fake_quant_tokens(x: Array, bits: int) -> Array:
  """Per-token (last axis) dynamic symmetric fake quantization with STE."""
  s = jax.lax.stop_gradient(max_scale(x, bits, axis=-1))
  return fake_quant(x, s, bits, axis=-1)


@flax.struct.dataclass
class ActQuantKernel:
  """A kernel whose `left_matmul` fake-quantizes its input first (W·A quantization)."""

  kernel: Any
  act_bits: int = flax.struct.field(pytree_node=False)

  def left_matmul(self, x: Array) -> Array:
    return matmul(fake_quant_tokens(x, self.act_bits), self.kernel)

  def dense(self) -> Array:
    return materialize(self.kernel)


def _check_bits(name: str, bits: int, shape: tuple[int, ...]) -> None:
  if not 2 <= bits <= 8:
    raise UserError(f"{name}(bits={bits}): supported widths are 2..8")
  if len(shape) < 1:
    raise UserError(f"{name} needs an array weight, got shape {tuple(shape)}")


@register
@dataclasses.dataclass(frozen=True)
class Quant(Transform):
  """θ = {w} ('max') or {w, scale} ('learned'); W = fake-quantized w."""

  name: ClassVar[str] = "quant"
  examples: ClassVar[tuple[str, ...]] = ("quant(bits=8)", "quant(bits=4, scale=learned)")
  slots: ClassVar[tuple[str, ...]] = ("w",)
  decayed: ClassVar[tuple[str, ...] | None] = ("w",)  # not the LSQ step size
  bits: int = 8
  scale: str = "max"  # 'max' (per-channel statistic) or 'learned' (LSQ)
  act_bits: int = 0   # > 0: also fake-quantize the layer input (2-D kernels in the project Dense)
  axis: int = 0       # reduced axis: 0 gives one scale per output column of a [d_in, d_out] kernel

  @property
  def keys(self) -> tuple[str, ...]:  # type: ignore[override]
    return ("w", "scale") if self.scale == "learned" else ("w",)

  def check(self, shape):
    _check_bits("quant", self.bits, shape)
    if self.scale not in ("max", "learned"):
      raise UserError(f"quant(scale={self.scale!r}): use 'max' or 'learned'")
    if self.act_bits and not 2 <= self.act_bits <= 8:
      raise UserError(f"quant(act_bits={self.act_bits}): supported widths are 2..8")
    if not -len(shape) <= self.axis < len(shape):
      raise UserError(f"quant(axis={self.axis}) is out of range for shape {tuple(shape)}")

  def from_dense(self, w, key=None):
    if self.scale == "learned":
      return {"w": w, "scale": lsq_init_scale(w, self.bits, self.axis).astype(w.dtype)}
    return {"w": w}

  def init_from(self, key, w_init):
    return self.from_dense(w_init, key)

  def apply(self, theta, rng=None):
    w = theta["w"]
    if self.scale == "learned":
      q = qmax(self.bits)
      g = 1.0 / jnp.sqrt(w.shape[self.axis] * q)  # LSQ: 1/√(N·q), N = entries per scale
      s = jnp.abs(theta["scale"]) + 1e-12
      s = s * g + jax.lax.stop_gradient(s - s * g)  # value s, gradient g·∂/∂s
    else:
      s = jax.lax.stop_gradient(max_scale(w, self.bits, self.axis))
    wq = fake_quant(w, s, self.bits, self.axis)
    return ActQuantKernel(wq, self.act_bits) if self.act_bits and w.ndim == 2 else wq

  def leaf_axes(self, names):
    kept = tuple(n for i, n in enumerate(names) if i != self.axis % len(names))
    return {"w": names, "scale": kept} if self.scale == "learned" else {"w": names}

  def dense_shape(self, theta):
    return shape_of(theta["w"])

  def deployed_bits(self, theta) -> int:
    """Bits of the int form this trains for: values plus f32 scales."""
    w = theta["w"]
    return self.bits * int(w.size) + 32 * int(w.size // w.shape[self.axis])


@register
@dataclasses.dataclass(frozen=True)
class QWeight(Transform):
  """θ = {q: int8, scale: f32 per channel}; the stored form of a post-training quantization."""

  name: ClassVar[str] = "qweight"
  examples: ClassVar[tuple[str, ...]] = ("qweight(bits=8)",)
  keys: ClassVar[tuple[str, ...]] = ("q", "scale")
  decayed: ClassVar[tuple[str, ...] | None] = ()  # integer storage, not trained
  bits: int = 8
  axis: int = 0

  def check(self, shape):
    _check_bits("qweight", self.bits, shape)

  def init_from(self, key, w_init):
    # The model's own init sample, stored quantized: a frozen base from scratch
    # (`qweight|lora`); alone it trains nothing, like `frozen`.
    return self.from_dense(w_init, key)

  def from_dense(self, w, key=None):
    q, s = quantize(w, self.bits, self.axis)
    return {"q": q, "scale": s}

  def apply(self, theta, rng=None):
    # In the dtype of the scale, i.e. of the weight it replaced (conversions cast float θ to it).
    return dequantize(theta["q"], theta["scale"], self.axis, theta["scale"].dtype)

  def leaf_axes(self, names):
    kept = tuple(n for i, n in enumerate(names) if i != self.axis % len(names))
    return {"q": names, "scale": kept}

  def dense_shape(self, theta):
    return shape_of(theta["q"])

  def trainable(self, theta):
    return {"q": False, "scale": False}

  def deployed_bits(self, theta) -> int:
    q = theta["q"]
    return self.bits * int(q.size) + 32 * int(q.size // q.shape[self.axis])
