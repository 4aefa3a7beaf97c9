"""Structured kernels: what a transform's `apply` may hand the project `Dense` instead of W.

The project `Dense` (models/layers.py) multiplies by anything with a
`left_matmul(x)` method and materializes anything with a `dense()` method, so a
factored weight stays factored through the forward and backward pass
(`(x U) Vᵀ` in r(m+n) instead of mn FLOPs).  The layer knows only that
protocol, not which reparameterization produced the kernel.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from reparam_jax.models.layers import materialize

Array = jax.Array

__all__ = ["ColumnScaledKernel", "LatentKernel", "LoRAKernel", "LowRankKernel", "materialize",
           "matmul"]


def matmul(x: Array, kernel: Any) -> Array:
  """`x @ kernel` for an array or any object with `left_matmul`.

  The plain product used inside kernels (a LoRA base, a factor): the model's
  own `layers.matmul` adds the bias fold and row flattening of its hot path.
  """
  if hasattr(kernel, "left_matmul"):
    return kernel.left_matmul(x)
  return x @ kernel


@flax.struct.dataclass
class LowRankKernel:
  """`W = u_MxR @ v_NxRᵀ`; multiplies `(x u) vᵀ` in r(m+n) instead of mn FLOPs."""

  u: Array
  v: Array

  def left_matmul(self, x: Array) -> Array:
    return (x @ self.u) @ self.v.T

  def dense(self) -> Array:
    return self.u @ self.v.T


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _adapter_product(scale: float, x_NxD: Array, a_DxR: Array, b_RxM: Array) -> Array:
  """`scale · (x A) B`, with the gradient written out as the autodiff one, product for product.

  Why by hand: for B's gradient (x A)ᵀ·dy XLA:CPU lays the big `dy` [tokens, d_out]
  out transposed, fused with the layer's backward (e.g. GELU's), a strided loop that
  took ~18 ms per MLP kernel at width 512, more than the layer's matmuls.  Written
  as an einsum over the token axes, the small `x A` is the operand that moves.
  """
  return scale * ((x_NxD @ a_DxR) @ b_RxM)


def _adapter_product_fwd(scale, x_NxD, a_DxR, b_RxM):
  xa_NxR = x_NxD @ a_DxR
  return scale * (xa_NxR @ b_RxM), (x_NxD, xa_NxR, a_DxR, b_RxM)


def _adapter_product_bwd(scale, residuals, dy_NxM):
  x_NxD, xa_NxR, a_DxR, b_RxM = residuals
  dy_NxM = scale * dy_NxM
  db_RxM = jnp.einsum("...r,...m->rm", xa_NxR, dy_NxM)
  dxa_NxR = dy_NxM @ b_RxM.T
  da_DxR = jnp.einsum("...d,...r->dr", x_NxD, dxa_NxR)
  dx_NxD = dxa_NxR @ a_DxR.T
  return (dx_NxD.astype(x_NxD.dtype), da_DxR.astype(a_DxR.dtype), db_RxM.astype(b_RxM.dtype))


_adapter_product.defvjp(_adapter_product_fwd, _adapter_product_bwd)


@flax.struct.dataclass
class LoRAKernel:
  """`W = base + scale · a_MxR @ b_RxN`, kept unmerged so the base may stay structured.

  With `dropout > 0` and a `dropout_rng`, the adapter's input is dropped out
  (Hu et al. 2021's `lora_dropout`): `x W₀ + s·(drop(x) A) B`.  `dense()`
  has no input to drop, so it is the deterministic weight.
  """

  base: Any
  a: Array
  b: Array
  scale: float = flax.struct.field(pytree_node=False)
  dropout: float = flax.struct.field(pytree_node=False, default=0.0)
  dropout_rng: Array | None = None

  @property
  def drops_input(self) -> bool:
    """Whether `left_matmul` drops out the adapter's input (training with dropout)."""
    return self.dropout > 0 and self.dropout_rng is not None

  def dropped(self, x: Array) -> Array:
    """The adapter's input: `x` dropped out and rescaled by 1/(1−p), or `x` itself."""
    if not self.drops_input:
      return x
    keep = jax.random.bernoulli(self.dropout_rng, 1.0 - self.dropout, x.shape)
    return jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)

  def adapter_matmul(self, x_adapter: Array) -> Array:
    """`s·(x_adapter A) B`: the update's product, on an input already dropped out."""
    return _adapter_product(self.scale, x_adapter, self.a, self.b)

  def left_matmul(self, x: Array) -> Array:
    return matmul(x, self.base) + self.adapter_matmul(self.dropped(x))

  def dense(self) -> Array:
    return materialize(self.base) + self.scale * (self.a @ self.b)


@flax.struct.dataclass
class LatentKernel:
  """`W = offset + dec_in_MxK1 @ z_K1xK2 @ dec_out_K2xN` (offset may be None)."""

  dec_in: Array
  z: Array
  dec_out: Array
  offset: Array | None = None

  def left_matmul(self, x: Array) -> Array:
    y = ((x @ self.dec_in) @ self.z) @ self.dec_out
    return y if self.offset is None else y + x @ self.offset

  def dense(self) -> Array:
    w = self.dec_in @ self.z @ self.dec_out
    return w if self.offset is None else w + self.offset


@flax.struct.dataclass
class ColumnScaledKernel:
  """`W = inner · diag(scale_N)`: each output column of `inner` scaled (DoRA's m / ‖V‖).

  Multiplies `(x @ inner) * scale`, so a factored `inner` (LoRA's W₀ + s·AB)
  is never materialized in the forward product.

  DoRA with LoRA dropout in training computes what PEFT's does (`lora.Linear.forward`
  with `use_dora`, and `DoraLinearLayer.forward` given no `base_result`): the base
  output on the undropped x plus the DoRA term on x_d = drop(x),
  `x W₀ + (c − 1)·(x_d W₀) + c·s·(x_d A) B` with c = `scale`.  That is two products
  with W₀, as in PEFT; without dropout (evaluation) both read `c·(x W₀ + s·(x A) B)`.
  """

  inner: Any
  scale: Array

  def left_matmul(self, x: Array) -> Array:
    if isinstance(self.inner, LoRAKernel) and self.inner.drops_input:
      lora, x_d = self.inner, self.inner.dropped(x)
      dora_term = matmul(x_d, lora.base) * (self.scale - 1) + lora.adapter_matmul(x_d) * self.scale
      return matmul(x, lora.base) + dora_term
    return matmul(x, self.inner) * self.scale

  def dense(self) -> Array:
    return materialize(self.inner) * self.scale
