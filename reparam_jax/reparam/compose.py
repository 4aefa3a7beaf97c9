"""Composition: a spec `a|b|c` as one node with the transform protocol.

Stages apply in declared order:
  * a *wrapper* transform (`wraps = True`, e.g. LoRA) takes everything
    declared before it as its frozen base: `spherical|lora` is
    `W = sph(θ₁) + s·A B` with θ = {base: θ₁, lora_a, lora_b} (`Wrapped`);
  * any other transform reparameterizes each weight-like *slot* of what came
    before (the `slots` of the previous stage, e.g. the factors `u`, `v` of
    low-rank): `lowrank|spherical` puts both factors in spherical coordinates
    (`SlotMapped`).

The nodes implement the same protocol as a `Transform` (duck typed), so
tree-level code never distinguishes a stack from a single transform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Transform, WrapperTransform, fold_key
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.matrix import MatrixView
from reparam_jax.reparam.transforms.identity import Frozen, Identity

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Wrapped:
  """`outer` (a wrapper such as LoRA) on top of `inner`, θ = {base: θ_inner, ...}."""

  outer: WrapperTransform
  inner: Any

  @property
  def slots(self):
    return self.outer.slots

  @property
  def name(self):
    return self.outer.name

  def check(self, shape):
    self.inner.check(shape)
    self.outer.check(shape)

  def init(self, key, shape, dtype, std):
    base = self.inner.init(fold_key(key, 0), shape, dtype, std)
    return {"base": base, **self.outer.wrap_own(fold_key(key, 1), self.inner, base, shape,
                                                dtype, std)}

  def init_from(self, key, w_init):
    base, own = self.outer.split_init(self.inner, key, w_init)
    return {"base": base, **own}

  def from_dense(self, w, key=None):
    base, own = self.outer.split(self.inner, w, key)
    return {"base": base, **own}

  def apply(self, theta, rng=None):
    base_w = self.inner.apply(theta["base"], fold_key(rng, 0))
    if self.outer.freezes_base:
      # No gradient flows into the frozen base: saves the d_in×d_out weight gradient.
      base_w = jax.lax.stop_gradient(base_w)
    own = {k: v for k, v in theta.items() if k != "base"}
    return self.outer.wrap_apply(own, base_w, fold_key(rng, 1))

  def leaf_axes(self, names):
    return self.outer.leaf_axes(names)

  def dense_shape(self, theta):
    return self.inner.dense_shape(theta["base"])

  def penalty(self, theta, step):
    own = {k: v for k, v in theta.items() if k != "base"}
    return _merge_terms(self.inner.penalty(theta["base"], step), self.outer.penalty(own, step))

  def post_update(self, theta):
    own = {k: v for k, v in theta.items() if k != "base"}
    return {"base": self.inner.post_update(theta["base"]), **self.outer.post_update(own)}

  def decayable(self, theta):
    own = {k: v for k, v in theta.items() if k != "base"}
    return {"base": self.inner.decayable(theta["base"]), **self.outer.decayable(own)}

  def trainable(self, theta):
    base = self.inner.trainable(theta["base"])
    if self.outer.freezes_base:
      base = jax.tree.map(lambda _: False, base)
    own = {k: v for k, v in theta.items() if k != "base"}
    return {"base": base, **self.outer.trainable(own)}

  def flops(self, theta):
    own = {k: v for k, v in theta.items() if k != "base"}
    return self.outer.wrap_flops(own, self.inner.flops(theta["base"]),
                                 tuple(self.inner.dense_shape(theta["base"])))

  def matches(self, theta):
    return (isinstance(theta, Mapping) and set(theta) == {"base", *self.outer.keys}
            and self.inner.matches(theta["base"]))

  def box(self, theta, names, make_box):
    axes = self.outer.leaf_axes(names)
    out = {"base": self.inner.box(theta["base"], names, make_box)}
    out.update({k: make_box(theta[k], axes[k]) for k in self.outer.keys})
    return out

  def describe(self):
    return f"{self.inner.describe()}|{self.outer.describe()}"


@dataclasses.dataclass(frozen=True)
class SlotMapped:
  """`outer` reparameterizing every weight-like slot of `inner` (e.g. both low-rank factors)."""

  inner: Any
  outer: Any

  @property
  def slots(self):
    return ()  # a following leaf-wise stage would be ambiguous; keep stacks readable

  @property
  def name(self):
    return self.inner.name

  def check(self, shape):
    self.inner.check(shape)

  def _split(self, theta):
    own = {k: v for k, v in theta.items() if k not in self.inner.slots}
    return own, {s: theta[s] for s in self.inner.slots}

  def init(self, key, shape, dtype, std):
    # Initialize the inner stage, then represent each slot exactly (or as
    # well as the outer stage can): the stack starts from the inner's init.
    theta = self.inner.init(fold_key(key, 0), shape, dtype, std)
    return self._map_slots(theta, lambda s, i, w: self.outer.from_dense(w, fold_key(key, i + 1)))

  def init_from(self, key, w_init):
    theta = self.inner.init_from(fold_key(key, 0), w_init)
    return self._map_slots(theta, lambda s, i, w: self.outer.from_dense(w, fold_key(key, i + 1)))

  def from_dense(self, w, key=None):
    theta = self.inner.from_dense(w, fold_key(key, 0))
    return self._map_slots(theta, lambda s, i, v: self.outer.from_dense(v, fold_key(key, i + 1)))

  def _map_slots(self, theta, fn):
    out = dict(theta)
    for i, s in enumerate(self.inner.slots):
      out[s] = fn(s, i, theta[s])
    return out

  def _slot_values(self, theta, rng):
    return self._map_slots(theta, lambda s, i, t: materialize(self.outer.apply(t, fold_key(rng, i + 1))))

  def apply(self, theta, rng=None):
    return self.inner.apply(self._slot_values(theta, rng), fold_key(rng, 0))

  def leaf_axes(self, names):
    return self.inner.leaf_axes(names)

  def dense_shape(self, theta):
    shapes = self._map_slots(theta, lambda s, i, t: jax.ShapeDtypeStruct(
        self.outer.dense_shape(t), jnp.float32))
    return self.inner.dense_shape(shapes)

  def penalty(self, theta, step):
    terms = self.inner.penalty(self._slot_values(theta, None), step)
    for s in self.inner.slots:
      terms = _merge_terms(terms, self.outer.penalty(theta[s], step))
    return terms

  def post_update(self, theta):
    return self._map_slots(theta, lambda s, i, t: self.outer.post_update(t))

  def _slot_flags(self, theta, flags_of):
    """Per-leaf flags (trainable, decayable): a slot's leaf is on where the stage over
    it says so, and only if the slot itself was on in the inner stage."""
    inner = flags_of(self.inner, theta)
    out = {k: inner[k] for k in theta if k not in self.inner.slots}
    for s in self.inner.slots:
      sub = flags_of(self.outer, theta[s])
      out[s] = jax.tree.map(lambda t, on=bool(inner[s]): bool(t) and on, sub)
    return out

  def decayable(self, theta):
    return self._slot_flags(theta, lambda node, t: node.decayable(t))

  def trainable(self, theta):
    return self._slot_flags(theta, lambda node, t: node.trainable(t))

  def flops(self, theta):
    shapes = self._map_slots(theta, lambda s, i, t: jax.ShapeDtypeStruct(
        self.outer.dense_shape(t), jnp.float32))
    return self.inner.flops(shapes)

  def matches(self, theta):
    if not (isinstance(theta, Mapping) and set(theta) == set(self.inner.keys)):
      return False
    return all(self.outer.matches(theta[s]) for s in self.inner.slots)

  def box(self, theta, names, make_box):
    axes = self.inner.leaf_axes(names)
    out = {}
    for k in self.inner.keys:
      if k in self.inner.slots:
        out[k] = self.outer.box(theta[k], axes[k], make_box)
      else:
        out[k] = make_box(theta[k], axes[k])
    return out

  def describe(self):
    return f"{self.inner.describe()}|{self.outer.describe()}"


def _merge_terms(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
  out = dict(a)
  for k, v in b.items():
    out[k] = out[k] + v if k in out else v
  return out


def compose(parts: list[Transform]) -> Any:
  """The node for a stack of transforms, in declared order (see module docstring)."""
  if not parts:
    raise UserError("empty transform spec")
  node: Any = None
  for t in parts:
    if isinstance(t, Identity) and not isinstance(t, Frozen) and node is not None:
      continue  # `identity` in a stack is a no-op
    if node is None:
      node = Wrapped(t, Identity()) if t.wraps else t
    elif t.wraps:
      node = Wrapped(t, node)
    else:
      if not node.slots:
        raise UserError(f"{t.name!r} cannot follow {node.describe()!r}: it has no weight-like "
                        "entries to reparameterize (see docs/reparam.md, composition)")
      node = SlotMapped(node, t)
  return node


def stages(node: Any) -> Iterator[Transform]:
  """The transforms of a (possibly composed) node, in declared order."""
  if isinstance(node, MatrixView):
    yield from stages(node.inner)
  elif isinstance(node, Wrapped):
    yield from stages(node.inner)
    yield node.outer
  elif isinstance(node, SlotMapped):
    yield from stages(node.inner)
    yield from stages(node.outer)
  else:
    yield node
