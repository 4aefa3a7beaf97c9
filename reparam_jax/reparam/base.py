"""The transform protocol, its registry, structured kernels and composition.

A *transform* reparameterizes one weight `W` as a small dict of arrays `θ`
(the names of its entries are the transform's `keys`).  It is a frozen
dataclass whose fields are the keyword arguments of its spec string
(`lowrank(rank=16)` → `LowRank(rank=16)`), and it implements pure functions:

  init(key, shape, dtype, std) -> θ      fresh θ whose W has RMS ≈ `std`
  from_dense(w, key) -> θ                 θ representing (or approximating) w
  apply(θ, rng) -> W | structured kernel  rng=None means "use the mean"
  leaf_axes(names) -> {key: names}        logical axes of each θ leaf
  dense_shape(θ) -> shape of W            (θ may hold ShapeDtypeStructs)
  penalty(θ, step) -> {term: scalar}      optional, e.g. a KL
  post_update(θ) -> θ                     optional, e.g. projection to a sphere
  trainable(θ) -> {key: bool}             optional, False freezes a leaf
  flops(θ) -> matmul FLOPs per token      for 2-D weights used as `x @ W`

Everything else (matching rules to parameter paths, boxing θ for sharding,
walking checkpoints) is generic and lives in `rules.py` / `intercept.py`.

Composition.  A spec `a|b|c` is applied in declared order:
  * a *wrapper* transform (`wraps = True`, e.g. LoRA) takes everything
    declared before it as its frozen base: `spherical|lora` is
    `W = sph(θ₁) + s·A B` with θ = {base: θ₁, lora_a, lora_b};
  * any other transform reparameterizes each weight-like *slot* of what came
    before (the `slots` of the previous stage, e.g. the factors `u`, `v` of
    low-rank): `lowrank|spherical` puts both factors in spherical coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping

import flax
import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError

Array = jax.Array
Theta = Any  # an array (identity) or a dict of arrays / nested θ
Names = tuple  # logical axis names of one array, e.g. ('embed', 'mlp')

# ---------------------------------------------------------------------------
# Structured kernels: what `apply` hands the project `Dense` instead of W.


def matmul(x: Array, kernel: Any) -> Array:
  """`x @ kernel` for an array or any object with `left_matmul`."""
  if hasattr(kernel, "left_matmul"):
    return kernel.left_matmul(x)
  return x @ kernel


def materialize(kernel: Any) -> Array:
  return kernel.dense() if hasattr(kernel, "dense") else kernel


@flax.struct.dataclass
class LowRankKernel:
  """`W = u_MxR @ v_NxRᵀ`; multiplies `(x u) vᵀ` in r(m+n) instead of mn FLOPs."""

  u: Array
  v: Array

  def left_matmul(self, x: Array) -> Array:
    return (x @ self.u) @ self.v.T

  def dense(self) -> Array:
    return self.u @ self.v.T


@flax.struct.dataclass
class LoRAKernel:
  """`W = base + scale · a_MxR @ b_RxN`, kept unmerged so the base may stay structured."""

  base: Any
  a: Array
  b: Array
  scale: float = flax.struct.field(pytree_node=False)

  def left_matmul(self, x: Array) -> Array:
    return matmul(x, self.base) + self.scale * ((x @ self.a) @ self.b)

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


# ---------------------------------------------------------------------------
# Small numerics shared by the transforms.


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
  """‖x‖ with a finite (zero) gradient at x = 0, where `sqrt` has an infinite one."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def rms(w: Array) -> Array:
  """Root mean square (a traced scalar: init and conversion may run under jit)."""
  if not w.size:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.square(w.astype(jnp.float32))))


def softplus_inv(y: Array | float) -> Array:
  """ρ with softplus(ρ) = y (y > 0), stable for small and large y."""
  y = jnp.asarray(y)
  return y + jnp.log(-jnp.expm1(-y))


def need_2d(name: str, shape: tuple[int, ...]) -> None:
  if len(shape) != 2:
    raise UserError(f"{name} needs a 2-D [d_in, d_out] weight, got shape {tuple(shape)}; "
                    "restrict the rule's regex to kernels (e.g. '.*/kernel')")


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(x.shape)


# ---------------------------------------------------------------------------
# The transform protocol.


@dataclasses.dataclass(frozen=True)
class Transform:
  """Base class of a leaf transform; see the module docstring for the protocol."""

  name: ClassVar[str] = ""
  keys: ClassVar[tuple[str, ...]] = ()
  slots: ClassVar[tuple[str, ...]] = ()  # weight-like θ entries a following stage may reparameterize
  wraps: ClassVar[bool] = False

  # --- to implement -------------------------------------------------------
  def from_dense(self, w: Array, key: Array | None = None) -> Theta:
    raise NotImplementedError

  def apply(self, theta: Theta, rng: Array | None = None) -> Any:
    raise NotImplementedError

  def leaf_axes(self, names: Names) -> dict[str, Names]:
    raise NotImplementedError

  def dense_shape(self, theta: Theta) -> tuple[int, ...]:
    raise NotImplementedError

  # --- defaults -----------------------------------------------------------
  def init(self, key: Array, shape: tuple[int, ...], dtype: Any, std: float) -> Theta:
    """Default: represent a fresh Gaussian dense init of RMS `std` exactly."""
    return self.from_dense(std * jax.random.normal(key, shape, dtype), key)

  def init_from(self, key: Array, w_init: Array) -> Theta:
    """θ for training from scratch, given the model's own dense init sample.

    Default: `init` at the sample's scale (RMS).  `identity` keeps the sample
    itself, so a wrapped model initializes bit-identically to the bare one.
    """
    return self.init(key, tuple(w_init.shape), w_init.dtype, rms(w_init))

  def penalty(self, theta: Theta, step: Array | int) -> dict[str, Array]:
    return {}

  def post_update(self, theta: Theta) -> Theta:
    return theta

  def trainable(self, theta: Theta) -> dict[str, bool]:
    return {k: True for k in theta}

  def flops(self, theta: Theta) -> int:
    shape = self.dense_shape(theta)
    return 2 * math.prod(shape) if len(shape) == 2 else 0

  def check(self, shape: tuple[int, ...]) -> None:
    """Raises `UserError` when the transform cannot represent a weight of `shape`."""

  # --- node protocol shared with the composition nodes --------------------
  def matches(self, theta: Any) -> bool:
    return isinstance(theta, Mapping) and set(theta) == set(self.keys) and not any(
        isinstance(theta[k], Mapping) for k in self.keys)

  def box(self, theta: Theta, names: Names, make_box: Callable) -> Any:
    axes = self.leaf_axes(names)
    return {k: make_box(theta[k], axes[k]) for k in self.keys}

  def describe(self) -> str:
    kw = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
    return f"{self.name}({kw})" if kw else self.name


@dataclasses.dataclass(frozen=True)
class Identity(Transform):
  """θ = W.  Bit-identical to no transform; the base of a lone wrapper."""

  name: ClassVar[str] = "identity"

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

  def matches(self, theta):
    return not isinstance(theta, Mapping)

  def box(self, theta, names, make_box):
    return make_box(theta, names)


@dataclasses.dataclass(frozen=True)
class Frozen(Identity):
  """θ = W, excluded from optimization (e.g. everything but the adapters in LoRA)."""

  name: ClassVar[str] = "frozen"

  def apply(self, theta, rng=None):
    return jax.lax.stop_gradient(theta)

  def trainable(self, theta):
    return False


class WrapperTransform(Transform):
  """A transform that consumes the previous stage as a frozen or trainable `base`."""

  wraps: ClassVar[bool] = True
  freezes_base: ClassVar[bool] = True

  def wrap_init(self, key: Array, base: Theta, shape: tuple[int, ...], dtype: Any,
                std: float) -> dict[str, Array]:
    """The wrapper's own θ entries (not `base`)."""
    raise NotImplementedError

  def wrap_from_dense(self, base: Theta, w: Array, key: Array | None) -> dict[str, Array]:
    return self.wrap_init(key if key is not None else jax.random.key(0), base, w.shape,
                          w.dtype, rms(w))

  def wrap_apply(self, theta: dict[str, Array], base_w: Any, rng: Array | None) -> Any:
    raise NotImplementedError

  def wrap_flops(self, theta: dict[str, Array], base_flops: int) -> int:
    return base_flops


# ---------------------------------------------------------------------------
# Composition nodes.  They implement the same protocol as a Transform (duck
# typed), so the tree-level code never distinguishes a stack from a single
# transform.


def _fold(key: Array | None, i: int) -> Array | None:
  return None if key is None else jax.random.fold_in(key, i)


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
    base = self.inner.init(_fold(key, 0), shape, dtype, std)
    return {"base": base, **self.outer.wrap_init(_fold(key, 1), base, shape, dtype, std)}

  def init_from(self, key, w_init):
    base = self.inner.init_from(_fold(key, 0), w_init)
    return {"base": base, **self.outer.wrap_init(_fold(key, 1), base, tuple(w_init.shape),
                                                 w_init.dtype, rms(w_init))}

  def from_dense(self, w, key=None):
    base = self.inner.from_dense(w, _fold(key, 0))
    return {"base": base, **self.outer.wrap_from_dense(base, w, _fold(key, 1))}

  def apply(self, theta, rng=None):
    base_w = self.inner.apply(theta["base"], _fold(rng, 0))
    if self.outer.freezes_base:
      # No gradient flows into the frozen base: saves the d_in×d_out weight gradient.
      base_w = jax.lax.stop_gradient(base_w)
    own = {k: v for k, v in theta.items() if k != "base"}
    return self.outer.wrap_apply(own, base_w, _fold(rng, 1))

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

  def trainable(self, theta):
    base = self.inner.trainable(theta["base"])
    if self.outer.freezes_base:
      base = jax.tree.map(lambda _: False, base)
    own = {k: v for k, v in theta.items() if k != "base"}
    return {"base": base, **self.outer.trainable(own)}

  def flops(self, theta):
    own = {k: v for k, v in theta.items() if k != "base"}
    return self.outer.wrap_flops(own, self.inner.flops(theta["base"]))

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
    theta = self.inner.init(_fold(key, 0), shape, dtype, std)
    return self._map_slots(theta, lambda s, i, w: self.outer.from_dense(w, _fold(key, i + 1)))

  def init_from(self, key, w_init):
    theta = self.inner.init_from(_fold(key, 0), w_init)
    return self._map_slots(theta, lambda s, i, w: self.outer.from_dense(w, _fold(key, i + 1)))

  def from_dense(self, w, key=None):
    theta = self.inner.from_dense(w, _fold(key, 0))
    return self._map_slots(theta, lambda s, i, v: self.outer.from_dense(v, _fold(key, i + 1)))

  def _map_slots(self, theta, fn):
    out = dict(theta)
    for i, s in enumerate(self.inner.slots):
      out[s] = fn(s, i, theta[s])
    return out

  def _slot_values(self, theta, rng):
    return self._map_slots(theta, lambda s, i, t: materialize(self.outer.apply(t, _fold(rng, i + 1))))

  def apply(self, theta, rng=None):
    return self.inner.apply(self._slot_values(theta, rng), _fold(rng, 0))

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

  def trainable(self, theta):
    inner = self.inner.trainable(theta)
    out = {k: inner[k] for k in theta if k not in self.inner.slots}
    for s in self.inner.slots:
      sub = self.outer.trainable(theta[s])
      out[s] = jax.tree.map(lambda t, on=bool(inner[s]): bool(t) and on, sub)
    return out

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


def compose(stages: list[Transform]) -> Any:
  """The node for a stack of transforms, in declared order (see module docstring)."""
  if not stages:
    raise UserError("empty transform spec")
  node: Any = None
  for t in stages:
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


# ---------------------------------------------------------------------------
# Registry.

TRANSFORMS: dict[str, type] = {}


def register(cls: type) -> type:
  """Class decorator: makes `cls` available under `cls.name` in spec strings."""
  if not cls.name:
    raise ValueError(f"{cls} has no name")
  TRANSFORMS[cls.name] = cls
  return cls


register(Identity)
register(Frozen)
