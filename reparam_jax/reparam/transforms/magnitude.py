"""`magnitude`: a trained per-column magnitude on top of whatever the previous stages compute.

W = m · V / ‖V‖_c, where V is the weight of the stages before this one and
‖V‖_c the L2 norm of each output column (our kernels are `[d_in, d_out]`,
`y = x W`; the paper's row norm of a `[d_out, d_in]` weight is the same
vector).  m: [d_out] starts at ‖V‖_c, so the stack starts at V exactly.

DoRA (Liu et al. 2024) is the composition `lora(rank=r, alpha=α)|magnitude`:
V = W₀ + s·A B is LoRA's weight (W₀ frozen by LoRA; A, B trained), and this
stage splits it into a trained magnitude and the direction V/‖V‖_c.  As in
the paper (§4.3, "we treat ‖V + ΔV‖_c as a constant") and in PEFT, the norm
is detached from the backward pass (`detach_norm=True`), which saves the
memory of its gradient at almost no cost in accuracy; `detach_norm=False`
differentiates through it.

This stage is a wrapper that does *not* freeze what it wraps: the stages
before it keep their own trainable flags (LoRA's A and B train, its W₀ does
not).  The forward product stays factored: `(x W₀ + s·(x A) B) · (m/‖V‖_c)`;
the norm itself needs V, one d_in×d_out materialization per step.  With
`lora(dropout>0)` in training the product is PEFT's: the base output on the
undropped x plus DoRA's term on x_d = drop(x), `x W₀ + (c − 1)·(x_d W₀) +
c·s·(x_d A) B` with c = m/‖V‖_c (kernels.ColumnScaledKernel).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import WrapperTransform, fold_key, register
from reparam_jax.reparam.kernels import ColumnScaledKernel, materialize


def column_norm(v_MxN: jax.Array) -> jax.Array:
  """‖V‖_c: the L2 norm of each output column, computed in float32 or wider."""
  v = v_MxN.astype(jnp.promote_types(v_MxN.dtype, jnp.float32))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=0))


@register
@dataclasses.dataclass(frozen=True)
class Magnitude(WrapperTransform):
  """θ = {base: θ of the previous stages, magnitude: [d_out]}."""

  name: ClassVar[str] = "magnitude"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = (
      "lora(rank=2)|magnitude", "lora(rank=2)|magnitude(detach_norm=False)")
  keys: ClassVar[tuple[str, ...]] = ("magnitude",)
  decayed: ClassVar[tuple[str, ...] | None] = ()  # a scale, like a norm's gain
  freezes_base: ClassVar[bool] = False
  detach_norm: bool = True

  def check(self, shape):
    if len(shape) != 2:
      raise UserError(f"magnitude needs a 2-D [d_in, d_out] weight, got shape {tuple(shape)}")

  def _own(self, inner, base, dtype):
    return {"magnitude": column_norm(materialize(inner.apply(base))).astype(dtype)}

  def wrap_own(self, key, inner, base, shape, dtype, std):
    return self._own(inner, base, dtype)

  def split(self, inner, w, key):
    base = inner.from_dense(w, fold_key(key, 0))
    return base, self._own(inner, base, w.dtype)

  def split_init(self, inner, key, w_init):
    base = inner.init_from(fold_key(key, 0), w_init)
    return base, self._own(inner, base, w_init.dtype)

  def wrap_apply(self, theta, base_w, rng):
    del rng
    norm = column_norm(materialize(base_w))
    if self.detach_norm:
      norm = jax.lax.stop_gradient(norm)
    # A column of zeros has no direction: keep it zero rather than divide by 0.
    scale = theta["magnitude"].astype(norm.dtype) / jnp.where(norm > 0, norm, 1.0)
    return ColumnScaledKernel(base_w, scale.astype(theta["magnitude"].dtype))

  def leaf_axes(self, names):
    return {"magnitude": (names[1],)}

  def wrap_flops(self, theta, base_flops, shape=None):
    return base_flops + theta["magnitude"].shape[0]
