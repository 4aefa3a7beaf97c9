"""`packed` and `sparse24`: frozen weights stored really smaller, decoded inside the matmul.

`packed(bits=4, group=128, sym=False)` stores a `[d_in, d_out]` kernel on the group grid
of `compression/methods` (GPTQ's and AWQ's grid, compressed-tensors' pack-quantized):
groups of `group` consecutive d_in rows share one scale (and, asymmetric, one integer
zero point) per output column, and

  W = (codes − zeros) · scales          codes ∈ [0, 2^bits − 1]; zeros = 2^(bits−1) if sym

θ keeps the weight's 2-D layout, so its sharding axes carry over:
  codes   uint8 [d_in·bits/8, d_out]   packed along d_in: L = 8/gcd(8, bits) consecutive
                                       rows share B = L·bits/8 bytes (2 rows a byte at 4 bits,
                                       4 at 2, 8 rows in 3 bytes at 3, 1 at 8), code k of a
                                       chunk at bits [k·bits, (k+1)·bits) of the chunk's
                                       little-endian word: at 4 bits q4's layout exactly
  scales  float [n_groups, d_out]      in the dtype of the weight it replaced
  zeros   uint8 [n_groups, d_out]      asymmetric only (an integer in [0, 2^bits − 1])
`group = 0` is one group over all of d_in.  d_in must be a multiple of L (8 at 3 bits):
a weight that is not is refused with a one-line error rather than padded, because the
packed row count is then the only record of d_in.

Scales are stored in the weight's dtype, as compressed-tensors does: a float32 model keeps
the grid's float32 scales exactly (`theta_from_grid` then computes what the method's
`GroupGrid.dequantize()` does, bit for bit), a bfloat16 model halves their bytes.  At 4 bits
and group 128 float32 scales cost 32/128 = 0.25 bits per weight (4.31 bits in all, asym).

`from_dense` is round-to-nearest: `methods.rtn` written in jax.numpy (`rtn_jnp`, since
init and conversion run under jit; same codes, scales and zeros); `theta_from_grid(grid)`
stores any method's grid (GPTQ, AWQ).  `apply` returns a `PackedKernel`: `left_matmul` unpacks and
dequantizes inside the caller's jit (no dense copy is stored) under `jax.checkpoint`, so
the backward pass of an adapter on top (`packed|lora`) recomputes W from the bytes.  For
a few rows (cached decoding: one token per step) it never forms W: the product goes group
by group, `Σ_g s_g·(Σ_{i∈g} x_i c_i − z_g Σ_{i∈g} x_i)`, so scales and zeros act on the
small [groups, d_out] results instead of on every entry.

`sparse24` stores 2:4 sparsity compressed: of every 4 consecutive d_in entries 2 are kept,
  values  float [d_in/2, d_out]        the kept entries, in row order (rows 2k, 2k+1: block k)
  index   uint8 [⌈d_in/8⌉, d_out]      their positions 0..3 in the block, 2 bits each, 4 a
                                       byte (value row r at bits 2(r mod 4); d_in/2 not a
                                       multiple of 4 pads the last byte with zeros)
`from_dense` keeps the 2 largest |w| of each block (ties: the earlier row);
`theta_from_masked(w, mask)` stores a 2:4 mask from magnitude, SparseGPT or Wanda.  Frozen
like `packed` (a storage form: train with a mask and convert, or train an adapter on top,
`sparse24|lora`): a trainable float leaf beside the integer index would need `allow_int`
gradients in every training loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.compression import methods
from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, Transform, register
from reparam_jax.reparam.numerics import need_2d

BITS = (2, 3, 4, 8)
# Products of at most this many rows go group by group without forming W (decoding);
# more rows dequantize W once and use one dot (prefill, training an adapter).
GROUPED_MAX_ROWS = 8


def chunk(bits: int) -> tuple[int, int]:
  """(L, B): L consecutive d_in rows of `bits`-bit codes share B bytes."""
  rows = 8 // math.gcd(8, bits)
  return rows, rows * bits // 8


def pack(codes_IxO: Array, bits: int) -> Array:
  """uint8 codes < 2^bits, [d_in, d_out] → uint8 [d_in·bits/8, d_out] (module docstring)."""
  rows, nbytes = chunk(bits)
  d_in, d_out = codes_IxO.shape
  c = jnp.asarray(codes_IxO).astype(jnp.uint32).reshape(d_in // rows, rows, d_out)
  shifts = (bits * jnp.arange(rows, dtype=jnp.uint32))[None, :, None]
  word = jnp.sum(c << shifts, axis=1, dtype=jnp.uint32)  # disjoint bit fields: sum = or
  out = jnp.stack([(word >> (8 * j)) & 0xFF for j in range(nbytes)], axis=1)
  return out.astype(jnp.uint8).reshape(d_in // rows * nbytes, d_out)


def unpack(packed_PxO: Array, bits: int) -> Array:
  """Inverse of `pack`: uint8 [d_in·bits/8, d_out] → codes uint8 [d_in, d_out]."""
  rows, nbytes = chunk(bits)
  if nbytes == 1:  # 2, 4, 8 bits: shifts of the byte itself, no wider word
    p = packed_PxO[:, None, :]
    shifts = (bits * jnp.arange(rows, dtype=jnp.uint8))[None, :, None]
    c = (p >> shifts) & jnp.uint8(2 ** bits - 1)
  else:
    p = packed_PxO.reshape(-1, nbytes, packed_PxO.shape[1]).astype(jnp.uint32)
    word = sum(p[:, j] << (8 * j) for j in range(nbytes))[:, None, :]
    shifts = (bits * jnp.arange(rows, dtype=jnp.uint32))[None, :, None]
    c = ((word >> shifts) & (2 ** bits - 1)).astype(jnp.uint8)
  return c.reshape(-1, packed_PxO.shape[1])


def theta_from_grid(grid: methods.GroupGrid, dtype=jnp.float32) -> dict:
  """θ of `packed(bits=grid.bits, group=grid.group, sym=grid.symmetric)` holding `grid`
  (RTN's, GPTQ's, AWQ's); scales cast to `dtype` (the weight's)."""
  codes = np.asarray(grid.codes)
  d_in = codes.shape[0]
  _check(grid.bits, grid.group, (d_in, codes.shape[1]), "theta_from_grid: ")
  top = 2 ** grid.bits - 1
  if codes.max(initial=0) > top:
    raise UserError(f"theta_from_grid: codes reach {codes.max()} > {top}, the largest "
                    f"{grid.bits}-bit code; the grid's bits field is wrong")
  theta = {"codes": pack(jnp.asarray(codes), grid.bits),
           "scales": jnp.asarray(grid.scales).astype(dtype)}
  zeros = np.asarray(grid.zeros)
  if grid.symmetric:
    if np.any(zeros != 2 ** (grid.bits - 1)):
      raise UserError("theta_from_grid: a symmetric grid must have zeros = 2^(bits−1); "
                      "store it with symmetric=False")
  else:
    if np.any(zeros != np.round(zeros)) or zeros.min(initial=0) < 0 or zeros.max(initial=0) > top:
      raise UserError(f"theta_from_grid: zeros must be integers in [0, {top}] to be stored "
                      "in uint8; this grid's are not")
    theta["zeros"] = jnp.asarray(zeros.astype(np.uint8))
  return theta


def rtn_jnp(w_IxO: Array, bits: int, group: int, sym: bool) -> tuple[Array, Array, Array]:
  """`methods.rtn` in jax.numpy (init and conversion run under jit), the same operations in
  the same order, so the same codes, scales and zeros (test_packed checks it): (codes uint8
  [d_in, d_out], scales f32 [n_groups, d_out], zeros f32 [n_groups, d_out])."""
  d_in, d_out = w_IxO.shape
  g = group or d_in
  top = 2 ** bits - 1
  w = jnp.asarray(w_IxO, jnp.float32).reshape(d_in // g, g, d_out)
  # XLA turns a division by a constant into a multiplication by its (rounded) reciprocal,
  # which differs from numpy's division in the last bit; a barrier keeps a true division
  # (`methods.rtn`'s numbers, bit for bit).
  top_GxO = jax.lax.optimization_barrier(jnp.full((d_in // g, d_out), top, jnp.float32))
  if sym:
    scale = 2 * jnp.abs(w).max(axis=1) / top_GxO
    zero = jnp.full_like(scale, (top + 1) / 2)
  else:
    lo, hi = jnp.minimum(w.min(axis=1), 0), jnp.maximum(w.max(axis=1), 0)
    scale = (hi - lo) / top_GxO
    zero = jnp.round(-lo / jnp.where(scale > 0, scale, 1))
  scale = jnp.where(scale > 0, scale, 1.0)
  # (also A / broadcast(B) becomes A · broadcast(1/B): divide by a full-size barrier)
  scale_GxgxO = jax.lax.optimization_barrier(jnp.broadcast_to(scale[:, None], w.shape))
  codes = jnp.clip(jnp.round(w / scale_GxgxO) + zero[:, None], 0, top).astype(jnp.uint8)
  return codes.reshape(d_in, d_out), scale, zero


def _check(bits, group, shape, where):
  need_2d(f"{where}packed", shape)
  if bits not in BITS:
    raise UserError(f"{where}packed(bits={bits}): use 2, 3, 4 or 8")
  if not isinstance(group, int) or isinstance(group, bool) or group < 0:
    raise UserError(f"{where}packed(group={group!r}): use a positive integer, or 0 for one "
                    "group over all of d_in")
  d_in = shape[0]
  if group and d_in % group:
    raise UserError(f"{where}packed: group={group} does not divide d_in={d_in} of the "
                    f"{tuple(shape)} weight; use a divisor, or group=0")
  rows, nbytes = chunk(bits)
  if d_in % rows:
    raise UserError(f"{where}packed: d_in={d_in} of the {tuple(shape)} weight is not a multiple "
                    f"of {rows}, but {rows} {bits}-bit codes share {nbytes} byte(s) along d_in; "
                    "exclude the weight from the rule's regex or use another bits")


@flax.struct.dataclass
class PackedKernel:
  """A packed θ as a kernel: `left_matmul` decodes inside the jit (module docstring)."""

  theta: dict
  bits: int = flax.struct.field(pytree_node=False)
  group: int = flax.struct.field(pytree_node=False)

  def dense(self) -> Array:
    return _dequantize(self.theta, self.bits, self.group)

  def left_matmul(self, x: Array) -> Array:
    return _checkpointed_matmul(x, self.theta, self.bits, self.group)


def _zeros(theta, bits):
  if "zeros" in theta:
    return theta["zeros"].astype(jnp.float32)
  return jnp.full(theta["scales"].shape, 2.0 ** (bits - 1), jnp.float32)


def _dequantize(theta: dict, bits: int, group: int) -> Array:
  """(codes − zeros)·scales in float32, returned in the scales' dtype (the weight's)."""
  codes = unpack(theta["codes"], bits)
  d_in, d_out = codes.shape
  n_groups = theta["scales"].shape[0]
  c = codes.reshape(n_groups, d_in // n_groups, d_out).astype(jnp.float32)
  s = theta["scales"].astype(jnp.float32)[:, None, :]
  w = (c - _zeros(theta, bits)[:, None, :]) * s
  return w.reshape(d_in, d_out).astype(theta["scales"].dtype)


def _grouped_product(x_RxI: Array, theta: dict, bits: int) -> Array:
  """x @ W for a few rows without forming W: Σ_g s_g (Σ_{i∈g} x_i c_i − z_g Σ_{i∈g} x_i).

  The per-group products Σ_{i∈g} x_i c_i are a batched dot over the codes converted to
  float but not shifted or scaled (the zeros and scales act on the [groups, d_out]
  results); at 2, 4 and 8 bits each of the L codes of a byte is its own dot over the
  byte rows, so the codes are never interleaved back into d_in order.
  """
  rows, nbytes = chunk(bits)
  s = theta["scales"].astype(jnp.float32)
  n_groups, d_out = s.shape
  p = theta["codes"]
  x = x_RxI.astype(jnp.float32)
  if bits == 8:
    # A multiply-reduce, not a dot: XLA fuses the uint8 → float conversion into the
    # reduction, so a step reads each code byte once; a dot first writes W as float32
    # (4 bytes a weight) and reads it back, slower than the float32 model it replaces.
    x_RxGxH = x.reshape(-1, n_groups, p.shape[0] // n_groups)
    p_GxHxO = p.reshape(n_groups, -1, d_out)
    dot_RxGxO = jnp.sum(x_RxGxH[..., None] * p_GxHxO.astype(jnp.float32)[None], axis=2)
  elif nbytes == 1:
    x_RxGxHxL = x.reshape(-1, n_groups, p.shape[0] // n_groups, rows)
    p_GxHxO = p.reshape(n_groups, -1, d_out)
    dot_RxGxO = sum(
        jnp.einsum("rgh,gho->rgo", x_RxGxHxL[..., k],
                   ((p_GxHxO >> (bits * k)) & (2 ** bits - 1)).astype(jnp.float32))
        for k in range(rows))
  else:
    x_RxGxH = x.reshape(-1, n_groups, x.shape[-1] // n_groups)
    codes = unpack(p, bits).reshape(n_groups, -1, d_out).astype(jnp.float32)
    dot_RxGxO = jnp.einsum("rgh,gho->rgo", x_RxGxH, codes)
  x_sum_RxG = x.reshape(x.shape[0], n_groups, -1).sum(axis=2)
  zero_term_RxGxO = x_sum_RxG[..., None] * _zeros(theta, bits)[None]
  return jnp.sum((dot_RxGxO - zero_term_RxGxO) * s[None], axis=1)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _checkpointed_matmul(x: Array, theta: dict, bits: int, group: int) -> Array:
  # Residuals are x and θ (packed bytes): W is recomputed for the backward pass.
  del group  # the scales' row count says it
  x_RxI = x.reshape(-1, x.shape[-1])
  if x_RxI.shape[0] <= GROUPED_MAX_ROWS:
    y = _grouped_product(x_RxI, theta, bits).astype(x.dtype)
  else:
    y = x_RxI @ _dequantize(theta, bits, 0).astype(x.dtype)
  return y.reshape(*x.shape[:-1], y.shape[-1])


@register
@dataclasses.dataclass(frozen=True)
class Packed(Transform):
  """θ = {codes, scales[, zeros]}: W = (codes − zeros)·scales on the group grid."""

  name: ClassVar[str] = "packed"
  needs_matrix: ClassVar[bool] = True
  # Groups that divide the generic tests' kernels (d_in 4 and 16).
  examples: ClassVar[tuple[str, ...]] = ("packed(group=4)", "packed(bits=2, group=0, sym=True)")
  decayed: ClassVar[tuple[str, ...] | None] = ()  # frozen storage
  bits: int = 4
  group: int = 128  # consecutive d_in rows sharing a scale (and zero); 0: all of d_in
  sym: bool = False  # symmetric: zeros = 2^(bits−1), not stored

  @property
  def keys(self) -> tuple[str, ...]:  # type: ignore[override]
    return ("codes", "scales") if self.sym else ("codes", "scales", "zeros")

  def arg_problems(self):
    problems = []
    if self.bits not in BITS:
      problems.append(f"bits={self.bits!r}; use 2, 3, 4 or 8")
    if not isinstance(self.group, int) or isinstance(self.group, bool) or self.group < 0:
      problems.append(f"group={self.group!r}; use a positive integer, or 0 for one group over "
                      "all of d_in")
    return problems

  def check(self, shape):
    _check(self.bits, self.group, tuple(shape), "")

  def from_dense(self, w, key=None):
    self.check(tuple(w.shape))
    codes, scales, zeros = rtn_jnp(w, self.bits, self.group, self.sym)
    theta = {"codes": pack(codes, self.bits), "scales": scales.astype(w.dtype)}
    if not self.sym:
      theta["zeros"] = zeros.astype(jnp.uint8)
    return theta

  def init_from(self, key, w_init):
    return self.from_dense(w_init, key)  # store the model's own init sample

  def apply(self, theta, rng=None):
    theta = {k: jax.lax.stop_gradient(theta[k]) for k in self.keys}
    return PackedKernel(theta, self.bits, self.group)

  def leaf_axes(self, names):
    # The packed d_in axis keeps d_in's name (a shard of whole chunks is a shard of
    # consecutive rows); one group over d_in is a single row, not split.
    per_group = names if self.group else (None, names[1])
    axes = {"codes": names, "scales": per_group, "zeros": per_group}
    return {k: axes[k] for k in self.keys}

  def dense_shape(self, theta):
    p, n = theta["codes"].shape
    rows, nbytes = chunk(self.bits)
    return (p // nbytes * rows, n)

  def trainable(self, theta):
    return {k: False for k in theta}

  def stored_bits(self, theta) -> float:
    """Stored bits per entry of W (codes, scales, zeros), from θ's leaves."""
    n = math.prod(self.dense_shape(theta))
    return 8 * sum(int(np.dtype(v.dtype).itemsize) * math.prod(v.shape)
                   for v in theta.values()) / n


# --- 2:4 sparsity, stored compressed ---------------------------------------------------------

def _check24(shape, where=""):
  need_2d(f"{where}sparse24", shape)
  if shape[0] % 4:
    raise UserError(f"{where}sparse24: d_in={shape[0]} of the {tuple(shape)} weight is not a "
                    "multiple of 4 (2:4 keeps 2 of every 4 consecutive d_in entries); exclude "
                    "the weight from the rule's regex")


def top2_of_4(w_IxO: Array) -> Array:
  """The 2:4 mask keeping the 2 largest |w| of each 4 consecutive rows (ties: earlier row)."""
  d_in, d_out = w_IxO.shape
  a = jnp.abs(jnp.asarray(w_IxO, jnp.float32)).reshape(d_in // 4, 4, d_out)
  # rank of entry i in its block: how many entries j beat it (larger, or equal and earlier)
  a_i, a_j = a[:, :, None, :], a[:, None, :, :]
  earlier_IxJ = jnp.arange(4)[None, :] < jnp.arange(4)[:, None]
  beats = (a_j > a_i) | ((a_j == a_i) & earlier_IxJ[None, :, :, None])
  rank = jnp.sum(beats, axis=2)
  return (rank < 2).reshape(d_in, d_out)


def theta_from_masked(w_IxO: Array, mask_IxO: Array) -> dict:
  """θ of `sparse24` holding w where a 2:4 mask keeps it (exactly 2 of every 4 along d_in)."""
  w = jnp.asarray(w_IxO)
  d_in, d_out = w.shape
  _check24((d_in, d_out), "theta_from_masked: ")
  m = jnp.asarray(mask_IxO, bool).reshape(d_in // 4, 4, d_out)
  if not isinstance(m, jax.core.Tracer) and np.any(np.asarray(m).sum(axis=1) != 2):
    raise UserError("theta_from_masked: the mask keeps other than 2 of some 4 consecutive d_in "
                    "entries; sparse24 stores exactly 2:4 (make the mask with n:m = 2:4)")
  # positions of the two kept entries of each block, ascending: first and last kept
  first = jnp.argmax(m, axis=1)
  second = 3 - jnp.argmax(m[:, ::-1], axis=1)
  idx = jnp.stack([first, second], axis=1).astype(jnp.uint8)  # [d_in/4, 2, d_out]
  blocks = w.reshape(d_in // 4, 4, d_out)
  values = jnp.take_along_axis(blocks, idx.astype(jnp.int32), axis=1)
  idx_HxO = idx.reshape(d_in // 2, d_out)
  idx_HxO = jnp.pad(idx_HxO, ((0, -idx_HxO.shape[0] % 4), (0, 0)))
  return {"values": values.reshape(d_in // 2, d_out), "index": pack(idx_HxO, 2)}


def _sparse_dense(theta: dict) -> Array:
  values = theta["values"]
  h, d_out = values.shape
  idx = unpack(theta["index"], 2)[:h].reshape(h // 2, 2, 1, d_out)
  slots = jnp.arange(4, dtype=jnp.uint8)[None, None, :, None]
  v = values.reshape(h // 2, 2, 1, d_out)
  # each block: Σ over its two kept values, placed at their positions
  w = jnp.sum(jnp.where(idx == slots, v, jnp.zeros((), values.dtype)), axis=1)
  return w.reshape(2 * h, d_out)


@flax.struct.dataclass
class Sparse24Kernel:
  """A sparse24 θ as a kernel: `left_matmul` scatters the values into W inside the jit."""

  theta: dict

  def dense(self) -> Array:
    return _sparse_dense(self.theta)

  def left_matmul(self, x: Array) -> Array:
    return _checkpointed_sparse_matmul(x, self.theta)


@jax.checkpoint
def _checkpointed_sparse_matmul(x: Array, theta: dict) -> Array:
  # Residuals are x and θ: the dense W is recomputed for the backward pass.
  return x @ _sparse_dense(theta).astype(x.dtype)


@register
@dataclasses.dataclass(frozen=True)
class Sparse24(Transform):
  """θ = {values, index}: 2 of every 4 consecutive d_in entries, stored compressed."""

  name: ClassVar[str] = "sparse24"
  needs_matrix: ClassVar[bool] = True
  keys: ClassVar[tuple[str, ...]] = ("values", "index")
  examples: ClassVar[tuple[str, ...]] = ("sparse24",)
  decayed: ClassVar[tuple[str, ...] | None] = ()  # frozen storage

  def check(self, shape):
    _check24(tuple(shape))

  def from_dense(self, w, key=None):
    return theta_from_masked(w, top2_of_4(w))

  def init_from(self, key, w_init):
    return self.from_dense(w_init, key)

  def apply(self, theta, rng=None):
    return Sparse24Kernel({k: jax.lax.stop_gradient(theta[k]) for k in self.keys})

  def leaf_axes(self, names):
    return {"values": names, "index": names}

  def dense_shape(self, theta):
    h, n = theta["values"].shape
    return (2 * h, n)

  def trainable(self, theta):
    return {k: False for k in theta}
