"""`smooth`: a frozen per-input-channel scale s under which the stage before it stores its
weight, so the layer computes inner(x / s) (AWQ's and SmoothQuant's form, docs/awq_smoothquant.md).

AWQ and SmoothQuant move a factor s_j from input channel j of the activations into row j of
a `[d_in, d_out]` kernel: the stored weight is W' = diag(s)·W and the layer multiplies
(x / s) @ W'.  The papers fold 1/s into the op before the layer (a LayerNorm's gain);
here the layer carries it, so any layer can be compressed this way, and an exporter may
fold it later.

`smooth` is a wrapper: it takes the stages declared before it as its base, which stores W',
and θ = {base: θ of W', smooth_s: s [d_in]}; s is frozen, the base trains as it would alone.
The kernel it hands the project `Dense` divides x by s, then multiplies by the base kernel
*as a kernel*, so a base that does something with its input still sees x / s:

  quant(bits=8, act_bits=8)|smooth   SmoothQuant's W8A8: x / s quantized int8 per token
                                     (quant's `act_bits`), W' int8 per output channel
  qweight(bits=8)|smooth             int8 storage of W' (weight-only)
  identity|smooth, smooth            W' in float (AWQ's dequantized grid)

`dense()` is diag(1/s)·W', the weight the layer really computes with, so merges and
exports see the true weight.  `from_dense(w)` sets s = 1 (nothing to migrate without
calibration); a compression method sets θ with `scaled_theta`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, WrapperTransform, register
from reparam_jax.reparam.kernels import materialize, matmul
from reparam_jax.reparam.numerics import need_2d


@flax.struct.dataclass
class InputScaledKernel:
  """`W = diag(1/scale_I) · inner`: multiplies `inner` by x / scale, never forming W."""

  inner: Any
  scale: Array

  def left_matmul(self, x: Array) -> Array:
    return matmul(x / self.scale.astype(x.dtype), self.inner)

  def dense(self) -> Array:
    w = materialize(self.inner)
    return w / self.scale.astype(w.dtype)[:, None]


@register
@dataclasses.dataclass(frozen=True)
class Smooth(WrapperTransform):
  """θ = {base: θ of the previous stage (W' = diag(s)·W), smooth_s: s [d_in], frozen}."""

  name: ClassVar[str] = "smooth"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = ("smooth", "qweight(bits=8)|smooth")
  keys: ClassVar[tuple[str, ...]] = ("smooth_s",)
  decayed: ClassVar[tuple[str, ...] | None] = ()  # a calibration statistic, not a weight
  # s is fixed by calibration, but what the base stores still trains as it would alone
  # (`smooth` trains W', `quant|smooth` is QAT of the smoothed weight, `qweight` never trains).
  freezes_base: ClassVar[bool] = False

  def check(self, shape):
    need_2d("smooth", shape)

  def wrap_init(self, key, base, shape, dtype, std):
    del key, base, std
    return {"smooth_s": jnp.ones((shape[0],), dtype)}

  def wrap_apply(self, theta, base_w, rng):
    del rng
    return InputScaledKernel(base_w, jax.lax.stop_gradient(theta["smooth_s"]))

  def trainable(self, theta):
    return {"smooth_s": False}

  def leaf_axes(self, names):
    return {"smooth_s": (names[0],)}

  def wrap_flops(self, theta, base_flops, shape=None):
    del theta, shape  # one divide per input feature per token, no matmul
    return base_flops


def scaled_theta(node: Any, weight_IxO: Array, scale_I: Array, key: Array | None = None) -> dict:
  """θ of a stack ending in `smooth` (e.g. `parse_spec('quant(bits=8, act_bits=8)|smooth')`)
  whose layer computes with `weight_IxO` on input channels divided by `scale_I`: the base
  stores diag(s)·weight (as its own `from_dense` does), smooth_s = s.  With a method's
  `MethodResult`, pass its weight_IxO and input_scale_I."""
  if not isinstance(getattr(node, "outer", None), Smooth):
    raise UserError(f"{node.describe()!r} does not end in 'smooth': only such a stack can carry "
                    "an input scale (e.g. 'quant(bits=8, act_bits=8)|smooth')")
  weight_IxO, scale_I = jnp.asarray(weight_IxO), jnp.asarray(scale_I, weight_IxO.dtype)
  if scale_I.shape != weight_IxO.shape[:1]:
    raise UserError(f"smooth: the input scale has shape {scale_I.shape}, the weight "
                    f"{weight_IxO.shape}; expected one scale per input row ({weight_IxO.shape[0]})")
  base = node.inner.from_dense(scale_I[:, None] * weight_IxO, key)
  return {"base": base, "smooth_s": scale_I}
