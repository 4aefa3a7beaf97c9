"""Sparsity masks: `W = where(M, w, 0)` with M in the non-trainable `'masks'` collection.

θ in `params` is `{"w": w}`; the mask (and, for movement pruning, the scores)
live in the variable collection `'masks'` at the same path and key structure,
boxed with the weight's logical names so they shard like it.  The split keeps
everything the optimizer sees in `params` (no optimizer state, no weight
decay and no gradient for M), while `intercept.py` joins the two trees
before `apply` (`join_aux`), so a mask composes like any other stage:

  mask(...)               W = M ⊙ w
  lowrank(rank=r)|mask    both factors masked: W = (M_u ⊙ u)(M_v ⊙ v)ᵀ
  mask|quant(bits=8)      W = M ⊙ Q(w)      (quant reparameterizes the slot `w`)
  quant(bits=8)|mask      W = Q(M ⊙ w)
  mask|lora               frozen masked base plus a dense adapter

Stages with non-parameter state declare `aux_keys`; the generic helpers at the
bottom find them inside composed nodes.  Without the aux entries (a params-only
tree, e.g. in `penalty` or a report) `apply` uses no mask.

When and how M changes is set by the spec's fields and done by
`reparam_jax.reparam.transforms.mask_update` inside the jitted train step (see
docs/compression.md): one-shot, gradual (Zhu & Gupta's cubic schedule),
magnitude / movement / soft movement / threshold scores, unstructured, N:M or
groups (attention heads, MLP neurons), per layer or global.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import SlotMapped, Transform, Wrapped, register, shape_of

AUX_COLLECTION = "masks"
METHODS = ("magnitude", "movement", "soft_movement", "threshold", "fixed")
SCOPES = ("layer", "global")


def parse_nm(pattern: str) -> tuple[int, int] | None:
  """'2:4' → (2, 4); other patterns → None."""
  if ":" not in pattern:
    return None
  try:
    n, m = (int(x) for x in pattern.split(":"))
  except ValueError:
    raise UserError(f"mask(pattern={pattern!r}): N:M patterns look like '2:4'") from None
  if not 0 < n < m:
    raise UserError(f"mask(pattern={pattern!r}): need 0 < N < M")
  return n, m


@register
@dataclasses.dataclass(frozen=True)
class Mask(Transform):
  """θ = {w}; aux (collection 'masks') = {mask: bool like w[, scores: f32 like w]}."""

  name: ClassVar[str] = "mask"
  keys: ClassVar[tuple[str, ...]] = ("w",)
  slots: ClassVar[tuple[str, ...]] = ("w",)
  method: str = "magnitude"      # how the kept entries are scored (METHODS)
  sparsity: float = 0.5          # final target s_f (fraction of entries, or of groups, pruned)
  initial_sparsity: float = 0.0  # s_i at begin_step
  begin_step: int = 0            # t0: first mask update
  end_step: int = 0              # t0 + nΔt: last update (== begin_step: one-shot)
  every: int = 100               # Δt between updates
  scope: str = "layer"           # rank within each weight ('layer') or across all ('global')
  pattern: str = "unstructured"  # 'unstructured', 'N:M' (e.g. '2:4'), or 'group'
  groups: int = 0                # pattern='group': number of groups along `axis` (heads, neurons)
  axis: int = 1                  # pattern='group': 1 = columns (q/k/v, fc_in), 0 = rows (out, fc_out)
  threshold: float = 0.0         # method='threshold' (|w|) or 'soft_movement' (scores)
  l1: float = 0.0                # method='soft_movement': L1 shrinkage of the scores per step

  @property
  def aux_keys(self) -> tuple[str, ...]:
    return ("mask", "scores") if self.method in ("movement", "soft_movement") else ("mask",)

  def check(self, shape):
    if self.method not in METHODS:
      raise UserError(f"mask(method={self.method!r}): choose one of {', '.join(METHODS)}")
    if self.scope not in SCOPES:
      raise UserError(f"mask(scope={self.scope!r}): choose 'layer' or 'global'")
    if not 0.0 <= self.initial_sparsity <= self.sparsity <= 1.0:
      raise UserError(f"mask: need 0 ≤ initial_sparsity ≤ sparsity ≤ 1, got "
                      f"{self.initial_sparsity} and {self.sparsity}")
    if self.end_step < self.begin_step or self.every < 1:
      raise UserError("mask: need end_step ≥ begin_step and every ≥ 1")
    nm = parse_nm(self.pattern)
    if nm is not None:
      if len(shape) != 2 or shape[0] % nm[1]:
        raise UserError(f"mask(pattern={self.pattern!r}) needs a 2-D kernel whose input size is "
                        f"a multiple of {nm[1]}, got shape {tuple(shape)}")
    elif self.pattern == "group":
      if len(shape) != 2 or self.axis not in (0, 1):
        raise UserError("mask(pattern='group') needs a 2-D kernel and axis 0 (rows) or 1 (columns)")
      if self.groups < 1 or shape[self.axis] % self.groups:
        raise UserError(f"mask(groups={self.groups}) must divide axis {self.axis} of shape "
                        f"{tuple(shape)}")
    elif self.pattern != "unstructured":
      raise UserError(f"mask(pattern={self.pattern!r}): use 'unstructured', 'N:M' or 'group'")

  def init_from(self, key, w_init):
    return {"w": w_init}  # a mask starts all-ones: the wrapped model equals the bare one

  def init(self, key, shape, dtype, std):
    return {"w": std * jax.random.normal(key, shape, dtype)}

  def from_dense(self, w, key=None):
    return {"w": w}

  def apply(self, theta, rng=None):
    w = theta["w"]
    if "mask" not in theta:
      return w
    return jnp.where(theta["mask"], w, jnp.zeros((), jnp.result_type(w)))

  def leaf_axes(self, names):
    return {"w": names}

  def dense_shape(self, theta):
    return shape_of(theta["w"])

  def matches(self, theta):
    return isinstance(theta, Mapping) and set(theta) == {"w"} and not isinstance(theta["w"], Mapping)

  # --- aux state -------------------------------------------------------------
  def aux_init(self, w: Any) -> dict[str, jax.Array]:
    out = {"mask": jnp.ones(w.shape, jnp.bool_)}
    if "scores" in self.aux_keys:
      out["scores"] = jnp.zeros(w.shape, jnp.float32)
    return out


# ---------------------------------------------------------------------------
# Generic walking of composed nodes for stages with aux state.


def aux_stages(node: Any, theta: Any, prefix: tuple = ()) -> list[tuple[Any, tuple]]:
  """(stage, key path inside θ) for every stage of `node` that has `aux_keys`."""
  if isinstance(node, SlotMapped):
    out = aux_stages(node.inner, theta, prefix)
    for s in node.inner.slots:
      out += aux_stages(node.outer, theta[s], prefix + (s,))
    return out
  if isinstance(node, Wrapped):
    return aux_stages(node.inner, theta["base"], prefix + ("base",))
  return [(node, prefix)] if getattr(node, "aux_keys", ()) else []


def has_aux(node: Any) -> bool:
  if isinstance(node, SlotMapped):
    return has_aux(node.inner) or has_aux(node.outer)
  if isinstance(node, Wrapped):
    return has_aux(node.inner)
  return bool(getattr(node, "aux_keys", ()))


def get_in(tree: Any, kp: tuple) -> Any:
  for k in kp:
    tree = tree[k]
  return tree


def set_in(tree: Any, kp: tuple, value: Any) -> Any:
  """A copy of nested dict `tree` with `value` at key path `kp` (creating dicts)."""
  if not kp:
    return value
  out = dict(tree) if isinstance(tree, Mapping) else {}
  out[kp[0]] = set_in(out.get(kp[0], {}), kp[1:], value)
  return out


def weight_leaf(stage_theta: Any) -> Any:
  """The array a mask acts on: its `w`, seen through stages that keep a `w` (quant)."""
  w = stage_theta["w"]
  while isinstance(w, Mapping):
    if "w" not in w:
      raise UserError("a mask must act on a weight-shaped entry; it cannot be followed by a "
                      "stage without a 'w' entry (write e.g. lowrank|mask instead of mask|lowrank)")
    w = w["w"]
  return w


def init_aux(node: Any, theta: Any, box_like: Any = None) -> dict:
  """The aux tree of one weight (e.g. {'mask': M} or {'u': {'mask': ..}, 'v': {..}}).

  `box_like(leaf_of_theta, value)` boxes each aux entry like the weight it
  masks (same logical names, so the mask shards like the weight).
  """
  out: dict = {}
  for stage, kp in aux_stages(node, theta):
    w = weight_leaf(get_in(theta, kp))
    raw = w.unbox() if hasattr(w, "unbox") else w
    aux = stage.aux_init(raw)
    if box_like is not None:
      aux = {k: box_like(w, v) for k, v in aux.items()}
    out = set_in(out, kp, {**get_in(out, kp), **aux} if kp and _has(out, kp) else aux)
  return out


def _has(tree: Any, kp: tuple) -> bool:
  try:
    get_in(tree, kp)
    return True
  except (KeyError, TypeError):
    return False


def join_aux(node: Any, theta: Any, aux: Any) -> Any:
  """θ with each aux-bearing stage's entries merged in (what `apply` consumes)."""
  if not aux:
    return theta
  for stage, kp in aux_stages(node, theta):
    if not _has(aux, kp):
      continue
    extra = {k: v for k, v in get_in(aux, kp).items() if k in stage.aux_keys}
    theta = set_in(theta, kp, {**get_in(theta, kp), **extra})
  return theta
