"""`q4`: a frozen weight stored as packed 4-bit codes with block-wise absmax scales (QLoRA's base).

QLoRA (Dettmers et al. 2023) keeps the pretrained weight in 4 bits and trains a
LoRA adapter on top: `q4(format=nf4)|lora(rank=8)`.  For a `[d_in, d_out]`
kernel (y = x W), each column is cut into blocks of `block_size` consecutive
d_in entries; block b of column j has the scale a_bj = max_i |W_ij| (absmax)
and each entry is stored as the index of the codebook value nearest W_ij / a_bj:

  W_ij ≈ a_bj · c[code_ij],   c = the 16 NF4 values (or k/7, k = −7..7 for int4)

θ keeps the weight's 2-D layout so its sharding axes carry over:
  packed  uint8 [d_in/2, d_out]    two codes per byte (row 2i in the low nibble, 2i+1 high)
  absmax  float [d_in/B, d_out]    the block scales
With `double_quant=True` the scales are themselves quantized (QLoRA §3): minus
their mean m (one per weight), in blocks of 256 consecutive scales along d_out,
to int8 with one float scale per block:
  absmax_q      int8  [d_in/B, d_out]
  absmax_scale  float [d_in/B, ceil(d_out/256)]
  absmax_mean   float []
so the overhead drops from 32/B to 8/B + 32/(256·B) bits per weight (4.127 bits
per weight in all at B = 64, against 4.5).  bitsandbytes quantizes the scales to
a dynamic 8-bit float format; a symmetric int8 grid is used here (same size,
error ≤ half a step of 1/127 of the block's largest centred scale).

dtype: the float leaves are stored in the dtype of the weight they replace (the
project's conversions cast float θ to it, and `from_dense` does the same; an
absmax is one of the weight's own entries, so it is exact in that dtype), and
`apply` dequantizes to that dtype: the float leaves record it, no extra field.

`apply` returns a `Q4Kernel`: the project `Dense` multiplies `x` by it through
`left_matmul`, which dequantizes under `jax.checkpoint`, so the backward pass
recomputes W from the packed bytes instead of keeping every layer's dense W
alive between the forward and backward passes.  Stock Flax layers get the
dense array.  Everything is frozen (`trainable` all False, no weight decay):
the persistent storage is the packed bytes; train an adapter on top.

NF4 codebook (QLoRA §3, "4-bit NormalFloat"): quantiles of N(0, 1), 8 on the
positive side and 7 on the negative side so that 0 is exact, scaled to [−1, 1];
built by `nf4_codebook()` from the normal quantile function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, positive_int, register
from reparam_jax.reparam.numerics import need_2d

FORMATS = ("nf4", "int4")
DQ_BLOCK = 256  # scales per second-level block (QLoRA's double quantization)
DQ_MAX = 127    # symmetric int8 grid of the centred scales


@functools.cache
def nf4_codebook() -> tuple[float, ...]:
  """The 16 NF4 values, ascending, from −1 to 1 with an exact 0.

  A k-bit quantile grid for N(0, 1) puts each value at a quantile q_i = Φ⁻¹(p_i).
  The end probabilities cannot be 0 and 1 (Φ⁻¹ = ∓∞), so the outermost one is
  δ = ½((1 − 1/(2·15)) + (1 − 1/(2·16))), the mean of the outermost bin centres
  of 15- and 16-bin grids.  The positive half takes 8 probabilities evenly spaced
  from δ down to ½ (½ itself, Φ⁻¹ = 0, dropped), the negative half 7 from δ to ½
  (mirrored), then 0 is added once and everything is divided by Φ⁻¹(δ).
  """
  inv = statistics.NormalDist().inv_cdf
  delta = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))
  pos = [inv(p) for p in np.linspace(delta, 0.5, 9)[:-1]]
  neg = [-inv(p) for p in np.linspace(delta, 0.5, 8)[:-1]]
  top = inv(delta)
  return tuple(sorted(v / top for v in pos + neg + [0.0]))


def int4_codebook() -> tuple[float, ...]:
  """k/7 for k = −8..7: the symmetric grid −7..7 (index 0, −8/7, is never nearest to |x| ≤ 1)."""
  return tuple(k / 7 for k in range(-8, 8))


def codebook(fmt: str) -> np.ndarray:
  return np.asarray(nf4_codebook() if fmt == "nf4" else int4_codebook(), np.float32)


def pack(codes_MxN: Array) -> Array:
  """uint8 codes 0..15, [d_in, d_out] → uint8 [d_in/2, d_out]: row 2i low nibble, 2i+1 high."""
  pairs = codes_MxN.astype(jnp.uint8).reshape(codes_MxN.shape[0] // 2, 2, codes_MxN.shape[1])
  return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack(packed_HxN: Array) -> Array:
  """Inverse of `pack`: uint8 [d_in/2, d_out] → codes uint8 [d_in, d_out]."""
  lo, hi = packed_HxN & 0xF, packed_HxN >> 4
  return jnp.stack([lo, hi], axis=1).reshape(2 * packed_HxN.shape[0], packed_HxN.shape[1])


def block_absmax(w_MxN: Array, block_size: int) -> Array:
  """max |W| over each block of `block_size` consecutive rows, per column: [d_in/B, d_out]."""
  m, n = w_MxN.shape
  return jnp.max(jnp.abs(w_MxN.reshape(m // block_size, block_size, n)), axis=1)


def quantize_blocks(w_MxN: Array, cb: np.ndarray, block_size: int) -> tuple[Array, Array]:
  """(codes uint8 [d_in, d_out], absmax f32 [d_in/B, d_out]): nearest codebook value per entry."""
  m, n = w_MxN.shape
  w = w_MxN.astype(jnp.float32)
  absmax = block_absmax(w, block_size)
  safe = jnp.where(absmax > 0, absmax, 1.0)  # an all-zero block codes as the value 0
  x = (w.reshape(m // block_size, block_size, n) / safe[:, None, :]).reshape(m, n)
  # Nearest value = the number of midpoints below x (a tie goes to the lower value).
  mid = jnp.asarray((cb[1:] + cb[:-1]) / 2)
  codes = jnp.searchsorted(mid, x, side="left")
  return codes.astype(jnp.uint8), absmax


def dequantize_blocks(codes_MxN: Array, absmax: Array, cb: np.ndarray, dtype: Any) -> Array:
  """c[code] · absmax, computed in f32 and returned in `dtype`."""
  m, n = codes_MxN.shape
  nb = absmax.shape[0]
  vals = jnp.take(jnp.asarray(cb), codes_MxN.astype(jnp.int32), axis=0)
  w = vals.reshape(nb, m // nb, n) * absmax.astype(jnp.float32)[:, None, :]
  return w.reshape(m, n).astype(dtype)


def _pad_cols(x: Array, block: int) -> Array:
  pad = -x.shape[1] % block
  return jnp.pad(x, ((0, 0), (0, pad))) if pad else x


def quantize_scales(absmax: Array) -> tuple[Array, Array, Array]:
  """Double quantization: (int8 codes [nb, d_out], f32 scales [nb, ⌈d_out/256⌉], f32 mean [])."""
  a = absmax.astype(jnp.float32)
  mean = jnp.mean(a)
  c = _pad_cols(a - mean, DQ_BLOCK)
  nb, width = c.shape
  blocks = c.reshape(nb, width // DQ_BLOCK, DQ_BLOCK)
  s2 = jnp.max(jnp.abs(blocks), axis=2) / DQ_MAX
  s2 = jnp.where(s2 > 0, s2, 1.0)
  q = jnp.clip(jnp.round(blocks / s2[..., None]), -DQ_MAX, DQ_MAX).astype(jnp.int8)
  return q.reshape(nb, width)[:, :a.shape[1]], s2, mean


def dequantize_scales(q: Array, s2: Array, mean: Array) -> Array:
  """Inverse of `quantize_scales`, in f32: q · s2 (per 256-block along d_out) + mean."""
  n = q.shape[1]
  per_col = jnp.repeat(s2.astype(jnp.float32), DQ_BLOCK, axis=1)[:, :n]
  return q.astype(jnp.float32) * per_col + mean.astype(jnp.float32)


@flax.struct.dataclass
class Q4Kernel:
  """A q4 θ as a kernel: `left_matmul` dequantizes inside a remat region (see module doc)."""

  theta: dict
  block_size: int = flax.struct.field(pytree_node=False)
  fmt: str = flax.struct.field(pytree_node=False)

  def dense(self) -> Array:
    return _dequantize(self.theta, self.fmt)

  def left_matmul(self, x: Array) -> Array:
    return _checkpointed_matmul(x, self.theta, self.fmt)


def _float_leaf(theta: dict) -> Array:
  return theta["absmax"] if "absmax" in theta else theta["absmax_mean"]


def _dequantize(theta: dict, fmt: str) -> Array:
  """The dense weight, in the dtype of θ's float leaves (the weight it replaced)."""
  if "absmax" in theta:
    absmax = theta["absmax"]
  else:
    absmax = dequantize_scales(theta["absmax_q"], theta["absmax_scale"], theta["absmax_mean"])
  return dequantize_blocks(unpack(theta["packed"]), absmax, codebook(fmt), _float_leaf(theta).dtype)


@functools.partial(jax.checkpoint, static_argnums=(2,))
def _checkpointed_matmul(x: Array, theta: dict, fmt: str) -> Array:
  # Residuals are x and θ (packed bytes): W is recomputed for the backward pass.
  return x @ _dequantize(theta, fmt).astype(x.dtype)


def bits_per_weight(theta: dict) -> float:
  """Stored bits per entry of W (packed codes plus scales), from θ's leaves."""
  n = 2 * math.prod(theta["packed"].shape)
  return 8 * sum(int(np.dtype(v.dtype).itemsize) * math.prod(v.shape) for v in theta.values()) / n


@register
@dataclasses.dataclass(frozen=True)
class Q4(Transform):
  """θ = {packed, absmax} (or the double-quantized absmax_q/_scale/_mean); W = c[code] · absmax."""

  name: ClassVar[str] = "q4"
  needs_matrix: ClassVar[bool] = True
  # Block sizes that divide the generic tests' kernels (d_in 4 and 16).
  examples: ClassVar[tuple[str, ...]] = ("q4(block_size=2)",
                                         "q4(format=int4, block_size=4, double_quant=True)")
  decayed: ClassVar[tuple[str, ...] | None] = ()  # frozen storage
  format: str = "nf4"         # 'nf4' (normal-quantile codebook) or 'int4' (symmetric k/7 grid)
  block_size: int = 64        # consecutive d_in entries sharing one absmax
  double_quant: bool = False  # quantize the absmax scales to int8 in blocks of 256

  @property
  def keys(self) -> tuple[str, ...]:  # type: ignore[override]
    if self.double_quant:
      return ("packed", "absmax_q", "absmax_scale", "absmax_mean")
    return ("packed", "absmax")

  def arg_problems(self):
    problems = positive_int("block_size", self.block_size)
    if self.format not in FORMATS:
      problems.append(f"format={self.format!r}; use 'nf4' or 'int4'")
    return problems

  def check(self, shape):
    need_2d("q4", shape)
    for p in self.arg_problems():
      raise UserError(f"q4: {p}")
    d_in = shape[0]
    if d_in % 2:
      raise UserError(f"q4: d_in={d_in} of the {tuple(shape)} weight is odd, but two 4-bit codes "
                      "share a byte along d_in; exclude the weight from the rule's regex")
    if d_in % self.block_size or self.block_size % 2:
      fits = max(b for b in range(2, min(self.block_size, d_in) + 1, 2) if d_in % b == 0)
      raise UserError(f"q4: block_size={self.block_size} does not divide d_in={d_in} of the "
                      f"{tuple(shape)} weight (it must, and be even); use e.g. block_size={fits}")

  def from_dense(self, w, key=None):
    codes, absmax = quantize_blocks(w, codebook(self.format), self.block_size)
    theta = {"packed": pack(codes)}
    if self.double_quant:
      q, s2, mean = quantize_scales(absmax)
      theta.update(absmax_q=q, absmax_scale=s2.astype(w.dtype), absmax_mean=mean.astype(w.dtype))
    else:
      theta["absmax"] = absmax.astype(w.dtype)
    return theta

  def init_from(self, key, w_init):
    return self.from_dense(w_init, key)  # store the model's own init sample

  def apply(self, theta, rng=None):
    # Frozen storage: no gradient into the float scales either.
    theta = {k: jax.lax.stop_gradient(theta[k]) for k in self.keys}
    return Q4Kernel(theta, self.block_size, self.format)

  def leaf_axes(self, names):
    axes = {"packed": names, "absmax": names, "absmax_q": names,
            "absmax_scale": (names[0], None), "absmax_mean": ()}
    return {k: axes[k] for k in self.keys}

  def dense_shape(self, theta):
    h, n = theta["packed"].shape
    return (2 * h, n)

  def trainable(self, theta):
    return {k: False for k in theta}
