"""N-D kernels seen as the matrix their contraction makes: `MatrixView`.

Stock Flax layers keep kernels with several input or output axes:
`nn.DenseGeneral`'s kernel is `(*in_axes, *out_features)` and
`nn.MultiHeadDotProductAttention` holds `[embed, heads, head_dim]` (query,
key, value) and `[heads, head_dim, embed]` (out).  The layer contracts the
first k axes with its input, so the kernel *is* a `[prod(in), prod(out)]`
matrix.  A transform that needs a matrix (low rank, the LoRA family, q4, ...)
sees exactly that matrix here, and its weight is reshaped back to the N-D
shape for the layer; the transforms themselves only ever see 2-D weights.

k (how many leading axes are input axes) comes from, in this order:

1. the rule: `in_axes=K` in the spec, on any one stage
   (`lora(rank=8, in_axes=2)`); it applies to the whole stack;
2. the kernel's logical-axis names (`nn.with_logical_partitioning`): the
   attention layout splits a run of head axes (`HEAD_AXES`) from a run of
   other axes, `[embed, heads, kv]` → k = 1, `[heads, kv, embed]` → k = 2;
3. otherwise, for a transform that needs a matrix, a `UserError` asking for
   `in_axes=K`: `[embed, heads, head_dim]` and `[heads, head_dim, embed]` are
   not told apart by their shape alone, so the view never guesses.

A transform that acts on any shape (identity, frozen, delta, spherical,
quant, ...) keeps acting on the N-D array unless the rule gives `in_axes`;
with it, spherical's vectors and quant's channels are the matrix's columns
(one per output unit, each spanning all input axes).

θ of a viewed kernel is `{"matrix": θ of the 2-D transform, "layout": empty}`:
`layout` is a zero-size array of shape `(*in_shape, 0, *out_shape)` that
stores no values, only the kernel's shape and where its input axes end, so θ
alone (a checkpoint, `Reparam.to_dense`) says how to reshape the matrix back.
A 2-D kernel is never viewed: its θ and every computation on it are the plain
2-D transform's, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.reparam.kernels import materialize

MATRIX, LAYOUT = "matrix", "layout"

# Logical names of the per-head axes of attention kernels (this project's `heads`, `kv`;
# MaxText's and T5X's spellings).  A kernel whose names are a run of these and a run of
# other names has its input/output split at the boundary between the runs.
HEAD_AXES = frozenset({"heads", "kv", "q_heads", "kv_heads", "head_dim", "kv_head_dim",
                       "joined_kv"})


def needs_matrix(node: Any) -> bool:
  """Whether some stage of `node` only represents a 2-D `[d_in, d_out]` weight."""
  from reparam_jax.reparam.compose import stages  # here: compose imports this module
  return any(getattr(s, "needs_matrix", False) for s in stages(node))


def in_axes_from_names(names: tuple) -> int | None:
  """k for the attention layout (module docstring, 2.), or None when the names do not say."""
  if not names or any(n is None for n in names):
    return None
  heads = [n in HEAD_AXES for n in names]
  boundaries = [i for i in range(1, len(names)) if heads[i] != heads[i - 1]]
  return boundaries[0] if len(boundaries) == 1 else None


def node_for(rule: Any, path: str, shape: tuple[int, ...], names: tuple) -> Any:
  """The node that turns the weight at `path` (of `shape`, logical `names`) into θ:
  `rule.node` itself, or a `MatrixView` of it for an N-D kernel."""
  node, k, ndim = rule.node, getattr(rule, "in_axes", None), len(shape)
  if k is None:
    if ndim <= 2 or not needs_matrix(node):
      return node
    k = in_axes_from_names(names)
    if k is None:
      raise UserError(
          f"{path}: {rule.spec!r} needs a [d_in, d_out] matrix but the kernel has shape "
          f"{tuple(shape)}; add in_axes=K to the spec (the first K axes are contracted with the "
          f"input: K=1 for [embed, heads, head_dim], K=2 for [heads, head_dim, embed])")
  if not 1 <= k < ndim:
    raise UserError(f"{path}: in_axes={k} in {rule.spec!r} must leave at least one input and "
                    f"one output axis of the {ndim}-D weight of shape {tuple(shape)} "
                    f"(1 <= in_axes <= {ndim - 1})")
  if ndim == 2:
    return node  # already the matrix: the plain 2-D path
  return MatrixView(node, tuple(shape[:k]), tuple(shape[k:]))


def is_view_theta(theta: Any) -> bool:
  return isinstance(theta, Mapping) and set(theta) == {MATRIX, LAYOUT} and not isinstance(
      theta[LAYOUT], Mapping)


def view_of(node: Any, theta: Any) -> MatrixView | None:
  """The view that computes `theta` (θ of a viewed kernel made by `node`), else None."""
  if not is_view_theta(theta) or not node.matches(theta[MATRIX]):
    return None
  # Boxed, abstract, or a shapeless placeholder (optax's MaskedNode in an optimizer's tree,
  # which only asks for flags: no shape needed).
  shape = tuple(getattr(meta.unbox(theta[LAYOUT]), "shape", ()))
  split = shape.index(0) if 0 in shape else len(shape)
  return MatrixView(node, shape[:split], shape[split + 1:])


def _merged_name(names: tuple) -> Any:
  """The logical name of a run of axes merged into one matrix axis: the outermost one's.

  Sharding the merged axis along that name's mesh axes splits it into the same
  contiguous blocks as sharding the outermost axis does (row-major reshape).
  """
  return names[0] if names else None


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """`inner` (a transform or a composed stack) applied to the kernel reshaped to
  `[prod(in_shape), prod(out_shape)]`; same node protocol as a `Transform`."""

  inner: Any
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]

  slots = ()
  wraps = False

  @property
  def name(self) -> str:
    return self.inner.name

  @property
  def matrix_shape(self) -> tuple[int, int]:
    return (math.prod(self.in_shape), math.prod(self.out_shape))

  @property
  def shape(self) -> tuple[int, ...]:
    return self.in_shape + self.out_shape

  def _as_matrix(self, w: jax.Array) -> jax.Array:
    if tuple(w.shape) != self.shape:
      raise UserError(f"expected a weight of shape {self.shape} for {self.describe()!r}, "
                      f"got {tuple(w.shape)}")
    return w.reshape(self.matrix_shape)

  def _layout(self) -> jax.Array:
    return jnp.zeros(self.in_shape + (0,) + self.out_shape, jnp.float32)

  def _with(self, matrix_theta: Any) -> dict:
    return {MATRIX: matrix_theta, LAYOUT: self._layout()}

  def check(self, shape):
    self.inner.check(self.matrix_shape)

  def init(self, key, shape, dtype, std):
    return self._with(self.inner.init(key, self.matrix_shape, dtype, std))

  def init_from(self, key, w_init):
    return self._with(self.inner.init_from(key, self._as_matrix(w_init)))

  def from_dense(self, w, key=None):
    return self._with(self.inner.from_dense(self._as_matrix(w), key))

  def apply(self, theta, rng=None):
    # Always an array: a structured kernel (LoRAKernel, ...) multiplies 2-D inputs by a 2-D
    # weight, and the layers holding N-D kernels are stock ones, which take arrays only.
    return materialize(self.inner.apply(theta[MATRIX], rng)).reshape(self.shape)

  def dense_shape(self, theta):
    return self.shape

  def leaf_axes(self, names):
    raise NotImplementedError("MatrixView boxes θ through `box`")

  def penalty(self, theta, step):
    return self.inner.penalty(theta[MATRIX], step)

  def post_update(self, theta):
    return {MATRIX: self.inner.post_update(theta[MATRIX]), LAYOUT: theta[LAYOUT]}

  def trainable(self, theta):
    return {MATRIX: self.inner.trainable(theta[MATRIX]), LAYOUT: False}

  def decayable(self, theta):
    return {MATRIX: self.inner.decayable(theta[MATRIX]), LAYOUT: False}

  def flops(self, theta):
    return self.inner.flops(theta[MATRIX])

  def matches(self, theta):
    return is_view_theta(theta) and self.inner.matches(theta[MATRIX])

  def box(self, theta, names, make_box):
    k = len(self.in_shape)
    matrix_names = (_merged_name(tuple(names[:k])), _merged_name(tuple(names[k:])))
    return {MATRIX: self.inner.box(theta[MATRIX], matrix_names, make_box),
            # Holds nothing; unsharded so no mesh axis has to divide its zero.
            LAYOUT: make_box(theta[LAYOUT], (None,) * theta[LAYOUT].ndim)}

  def describe(self):
    return f"{self.inner.describe()} on {self.shape} as {self.matrix_shape}"
