"""`identity` (θ = W) and `frozen` (θ = W, not optimized): the trivial transforms."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax

from reparam_jax.reparam.base import Transform, register
from reparam_jax.reparam.numerics import shape_of


@register
@dataclasses.dataclass(frozen=True)
class Identity(Transform):
  """θ = W.  Bit-identical to no transform; the base of a lone wrapper."""

  name: ClassVar[str] = "identity"
  examples: ClassVar[tuple[str, ...]] = ("identity",)

  def init(self, key, shape, dtype, std):
    return std * jax.random.normal(key, shape, dtype)

  def init_from(self, key, w_init):
    return w_init

  def from_dense(self, w, key=None):
    return w

  def apply(self, theta, rng=None):
    return theta

  def dense_shape(self, theta):
    return shape_of(theta)

  def leaf_axes(self, names):
    return names

  def trainable(self, theta):
    return True

  def decayable(self, theta):
    # As for a plain parameter: matrices, not biases or scales.  (Inside optax's
    # multi_transform a frozen leaf is a shapeless MaskedNode: nothing to decay.)
    return len(getattr(theta, "shape", ())) >= 2

  def matches(self, theta):
    return not isinstance(theta, Mapping)

  def box(self, theta, names, make_box):
    return make_box(theta, names)


@register
@dataclasses.dataclass(frozen=True)
class Frozen(Identity):
  """θ = W, excluded from optimization (e.g. everything but the adapters in LoRA)."""

  name: ClassVar[str] = "frozen"
  examples: ClassVar[tuple[str, ...]] = ("frozen",)

  def apply(self, theta, rng=None):
    return jax.lax.stop_gradient(theta)

  def trainable(self, theta):
    return False
