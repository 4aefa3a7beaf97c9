"""The transform protocol and its registry (the mechanism; transforms live in `transforms/`).

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
  decayable(θ) -> {key: bool}             which leaves weight decay acts on (`decayed`)
  flops(θ) -> matmul FLOPs per token      for 2-D weights used as `x @ W`
  check(shape)                            optional: UserError if W's shape is unusable
  arg_problems() -> [message]             optional: arguments wrong for any weight

A transform with non-trainable per-weight state (a sparsity mask) also sets
`aux_keys` and `aux_init(w)`; `state.py` stores and joins that state
generically.  `examples` are spec strings of the transform that the test
suite exercises (the suite derives its lists from the registry).

Everything else (matching rules to parameter paths, boxing θ for sharding,
walking checkpoints, composition) is generic: `rules.py`, `intercept.py`,
`compose.py`.  Adding a transform is one file in `transforms/` plus one line
in `transforms/__init__.py` (docs/reparam.md, "Adding a transform").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping

import jax

from reparam_jax.reparam.numerics import rms

Array = jax.Array
Theta = Any  # an array (identity) or a dict of arrays / nested θ
Names = tuple  # logical axis names of one array, e.g. ('embed', 'mlp')


@dataclasses.dataclass(frozen=True)
class Transform:
  """Base class of a leaf transform; see the module docstring for the protocol."""

  name: ClassVar[str] = ""
  keys: ClassVar[tuple[str, ...]] = ()
  slots: ClassVar[tuple[str, ...]] = ()  # weight-like θ entries a following stage may reparameterize
  wraps: ClassVar[bool] = False
  # Represents only a 2-D [d_in, d_out] weight: an N-D kernel reaches it as a matrix (matrix.py).
  needs_matrix: ClassVar[bool] = False
  aux_keys: ClassVar[tuple[str, ...]] = ()  # non-trainable per-weight state (state.py)
  examples: ClassVar[tuple[str, ...]] = ()  # spec strings the test suite runs
  # θ entries decoupled weight decay acts on (weight-like values: factors, means,
  # directions); None = the slots.  Never angles, log-scales, radii, step sizes.
  decayed: ClassVar[tuple[str, ...] | None] = None

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

  def decayable(self, theta: Theta) -> dict[str, bool]:
    """Which θ entries weight decay may shrink (`decayed`, default the slots)."""
    keep = self.slots if self.decayed is None else self.decayed
    return {k: k in keep for k in theta}

  def flops(self, theta: Theta) -> int:
    shape = self.dense_shape(theta)
    return 2 * math.prod(shape) if len(shape) == 2 else 0

  def check(self, shape: tuple[int, ...]) -> None:
    """Raises `UserError` when the transform cannot represent a weight of `shape`."""

  def arg_problems(self) -> list[str]:
    """Arguments that are wrong for any weight (checked with the config, before any compute)."""
    return []

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

  # The three hooks below let a wrapper see the stage under it (`inner`, a node
  # with the transform protocol).  Their defaults are the plain wrapper: the
  # inner stage represents W by itself and the wrapper adds its own θ next to
  # it.  A wrapper overrides them when its own θ depends on the inner stage's
  # weight (DoRA's magnitude is the column norm of what it wraps) or when it
  # rewrites what the inner stage stores (PiSSA's residual, LoftQ's
  # quantization of W − AB).

  def wrap_own(self, key: Array, inner: Any, base: Theta, shape: tuple[int, ...], dtype: Any,
               std: float) -> dict[str, Array]:
    """This stage's θ entries on top of a freshly initialized `base` θ of `inner`."""
    del inner
    return self.wrap_init(key, base, shape, dtype, std)

  def split(self, inner: Any, w: Array, key: Array | None) -> tuple[Theta, dict[str, Array]]:
    """(θ of `inner`, own θ) that together represent the dense weight `w`."""
    base = inner.from_dense(w, fold_key(key, 0))
    return base, self.wrap_from_dense(base, w, fold_key(key, 1))

  def split_init(self, inner: Any, key: Array, w_init: Array) -> tuple[Theta, dict[str, Array]]:
    """(θ of `inner`, own θ) for training from scratch, given the model's dense init sample."""
    base = inner.init_from(fold_key(key, 0), w_init)
    return base, self.wrap_own(fold_key(key, 1), inner, base, tuple(w_init.shape),
                               w_init.dtype, rms(w_init))

  def wrap_apply(self, theta: dict[str, Array], base_w: Any, rng: Array | None) -> Any:
    raise NotImplementedError

  def wrap_flops(self, theta: dict[str, Array], base_flops: int,
                 shape: tuple[int, ...] | None = None) -> int:
    """Matmul FLOPs per token of the stack: the inner stage's plus this stage's own
    (`shape`: W's, for a stage whose θ holds no d_in-sized leaf)."""
    del theta, shape
    return base_flops


def fold_key(key: Array | None, i: int) -> Array | None:
  """The `i`-th independent key derived from `key` (None stays None: deterministic)."""
  return None if key is None else jax.random.fold_in(key, i)


def positive_int(name: str, value: Any) -> list[str]:
  """`arg_problems` helper: `name` must be a positive integer."""
  ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
  return [] if ok else [f"{name}={value!r}; expected a positive integer"]


def rate(name: str, value: Any) -> list[str]:
  """`arg_problems` helper: `name` must be a number in [0, 1) (1 would remove everything)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and 0 <= value < 1)
  return [] if ok else [f"{name}={value!r}; expected a number in [0, 1)"]


# ---------------------------------------------------------------------------
# Registry: `transforms/__init__.py` imports every transform module, each of
# which registers its classes with `@register`.

TRANSFORMS: dict[str, type] = {}


def register(cls: type) -> type:
  """Class decorator: makes `cls` available under `cls.name` in spec strings."""
  if not cls.name:
    raise ValueError(f"{cls} has no name")
  TRANSFORMS[cls.name] = cls
  return cls
