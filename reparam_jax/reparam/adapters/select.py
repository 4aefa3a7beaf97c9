"""Per-example adapter selection: adapters stacked on a leading axis, one per batch row.

For serving many adapters at once, or multi-task training: every adapter
leaf is stacked, `lora_a [N, d_in, r]`, `lora_b [N, r, d_out]`, the frozen
base stays one copy, and an int index per batch row says which adapter that
row uses.  One compiled program serves any mix of adapters.

  params_s, rp_s = stack_adapters(bank, ["math", "code", "chat"], params)
  model_s = rp_s.wrap(model)
  y = model_s.apply({"params": params_s, "adapter_index": {"index": idx_B}}, x_BxL)

A bank's `modules_to_save` (whole task heads) are not stacked into the
model; `stack_modules` gives them stacked for the caller to pick per row.

How it reaches the layers: `rp_s`'s rules wrap each adapter rule's node in
`Stacked`, whose `apply` returns a `RowKernel`; the interceptor hands it the
`'adapter_index'` collection (`intercept.ROWS_COLLECTION`, via
`select_rows`).  `RowKernel.left_matmul` gathers each row's adapter leaves
(`[B, ...]`, small) and `vmap`s the original node's own kernel over the rows
with the base unbatched, so for LoRA it is `x W₀` for all rows plus a batched
`s (x_b A_b) B_b`; for other stacks (DoRA) it is correct but each row
materializes its own kernel.  The project `Dense` hands structured kernels
`x` unflattened (`[B, L, d_in]`); a caller that flattened rows first
(`[B·L, d_in]`, row-major) is handled by reshaping back to `[B, L, d_in]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.pytree.paths import set_path, subtree
from reparam_jax.reparam.adapters.single import has_wrapper
from reparam_jax.reparam.api import Reparam
from reparam_jax.reparam.intercept import ROWS_COLLECTION
from reparam_jax.reparam.kernels import matmul
from reparam_jax.reparam.rules import Plan, Rule

Array = jax.Array
PyTree = Any


def _split(theta: Any, mask: Any) -> tuple[dict, dict]:
  """(trainable part, frozen part) of a θ dict by a trainable mask (bool or tree of bools)."""
  if isinstance(mask, bool):
    return (theta, {}) if mask else ({}, theta)
  on, off = {}, {}
  for k, v in theta.items():
    m = mask[k]
    if isinstance(v, Mapping):
      a, b = _split(v, m)
      if a:
        on[k] = a
      if b:
        off[k] = b
    elif m:
      on[k] = v
    else:
      off[k] = v
  return on, off


def _join(a: Any, b: Any) -> Any:
  if isinstance(a, Mapping) and isinstance(b, Mapping):
    return {k: _join(a[k], b[k]) if k in a and k in b else (a[k] if k in a else b[k])
            for k in {**a, **b}}
  return a


@flax.struct.dataclass
class RowKernel:
  """Per-row kernel: row b multiplies by `node.apply(shared ∪ stacked[index[b]])`."""

  stacked: Any  # adapter leaves, each [N, ...]
  shared: Any  # the frozen rest of θ (the base)
  rng: Any
  index: Any = None  # int [B]
  node: Any = flax.struct.field(pytree_node=False, default=None)
  pattern: str = flax.struct.field(pytree_node=False, default="")

  def select_rows(self, index: Array) -> RowKernel:
    return self.replace(index=jnp.asarray(index, jnp.int32))

  def left_matmul(self, x: Array) -> Array:
    if self.index is None:
      raise UserError(f"weights matching {self.pattern!r} hold a stack of adapters: pass the "
                      f"per-row index, apply({{..., {ROWS_COLLECTION!r}: {{'index': idx}}}}, ...)")
    index = self.index
    n, rows = index.shape[0], x.shape[0]
    if rows != n:
      if rows % n:
        raise UserError(f"{ROWS_COLLECTION} index has {n} rows but the layer input has {rows}; "
                        "give one adapter index per batch row")
      # Rows were flattened ([B·L, d] row-major): regroup them under their example.
      return self.left_matmul_grouped(x.reshape(n, rows // n, *x.shape[1:])).reshape(
          rows, -1)
    return self.left_matmul_grouped(x)

  def left_matmul_grouped(self, x_BxD: Array) -> Array:
    picked = jax.tree.map(lambda leaf: leaf[self.index], self.stacked)

    def one(own, x):
      return matmul(x, self.node.apply(_join(own, self.shared), self.rng))

    return jax.vmap(one)(picked, x_BxD)

  def dense(self) -> Array:
    raise UserError(f"weights matching {self.pattern!r} hold one adapter per batch row and have "
                    "no single dense weight; use the project's models (structured kernels)")


@dataclasses.dataclass(frozen=True)
class Stacked:
  """A rule's node with its trainable (adapter) leaves stacked on a leading axis of size `n`."""

  inner: Any
  n: int
  pattern: str = ""

  slots = ()

  @property
  def name(self):
    return self.inner.name

  def _parts(self, theta):
    return _split(theta, self.inner.trainable(theta))

  def _row(self, theta, i=0):
    own, shared = self._parts(theta)
    return _join(jax.tree.map(lambda a: a[i], own), shared)

  def apply(self, theta, rng=None):
    own, shared = self._parts(theta)
    return RowKernel(own, shared, rng, node=self.inner, pattern=self.pattern)

  def matches(self, theta):
    return self.inner.matches(theta)

  def trainable(self, theta):
    return self.inner.trainable(theta)

  def decayable(self, theta):
    return self.inner.decayable(theta)

  def dense_shape(self, theta):
    return self.inner.dense_shape(self._row(theta))

  def flops(self, theta):
    own, shared = self._parts(theta)
    row = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), own)
    return self.inner.flops(_join(row, shared))

  def penalty(self, theta, step):
    own, shared = self._parts(theta)
    terms = jax.vmap(lambda o: self.inner.penalty(_join(o, shared), step))(own)
    return {k: v.sum(0) for k, v in terms.items()}

  def post_update(self, theta):
    own, shared = self._parts(theta)
    new = jax.vmap(lambda o: self._parts(self.inner.post_update(_join(o, shared)))[0])(own)
    return _join(new, shared)

  def check(self, shape):
    self.inner.check(shape)

  def _built_elsewhere(self, *_args, **_kwargs):
    raise UserError("stacked adapters are built by stack_adapters(bank, names, params), "
                    "not initialized or converted")

  init = init_from = from_dense = box = _built_elsewhere

  def describe(self):
    return f"stack[{self.n}]({self.inner.describe()})"


def stacked_reparam(rp: Reparam, n: int) -> Reparam:
  """`rp` with every adapter rule's node stacked `n` deep."""
  rules = tuple(
      Rule(r.pattern, f"stack[{n}]({r.spec})", Stacked(r.node, n, r.pattern), r.regex)
      if has_wrapper(r.node) else r for r in rp.plan.rules)
  return Reparam(Plan(rules, rp.plan.structured))


def _stack_box(old: Any, values: Sequence[Any]) -> Any:
  stacked = jnp.stack([jnp.asarray(v, meta.unbox(old).dtype) for v in values])
  if isinstance(old, nn.Partitioned):
    return old.replace(value=stacked, names=(None, *old.names))
  return stacked


def stack_adapters(bank: Any, names: Sequence[str], params: PyTree) -> tuple[PyTree, Reparam]:
  """Base `params` with the adapters `names` of `bank` stacked (in that order: row index i
  selects `names[i]`), and the `Reparam` to wrap the model with."""
  if not names:
    raise UserError("stack_adapters needs at least one adapter name")
  adapters = [bank.complete(n) for n in names]  # also: unknown name -> UserError
  out = jax.tree.map(lambda x: x, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  for path in bank.layout:
    if path in bank.module_paths:
      continue  # a plain module (a head) cannot take a stack: see stack_modules
    old = subtree(params, path)
    if old is None:
      raise UserError(f"params have no adapter leaf {path}: pass the base params the bank was "
                      "created for")
    set_path(out, path, _stack_box(old, [ad[path] for ad in adapters]))
  return out, stacked_reparam(bank.rp, len(names))


def stack_modules(bank: Any, names: Sequence[str]) -> dict[str, Array]:
  """`{path: [N, ...]}`: the bank's `modules_to_save` leaves of adapters `names`, stacked
  in that order.  `stack_adapters` leaves these modules (e.g. task heads) unstacked, as
  an ordinary layer takes one weight; a caller applies each row's own (docs/incremental.md)."""
  adapters = [bank.complete(n) for n in names]
  return {p: jnp.stack([jnp.asarray(ad[p]) for ad in adapters])
          for p in sorted(bank.module_paths)}


def row_index(index: Any) -> dict[str, dict[str, Array]]:
  """The variables entry for `apply`: `{**variables, **row_index(idx_B)}`."""
  return {ROWS_COLLECTION: {"index": jnp.asarray(index, jnp.int32)}}
