"""Non-trainable per-weight state of a transform (e.g. a sparsity mask), generically.

A stage declares `aux_keys` and `aux_init(w)`.  Its state lives in the
variable collection `'masks'` (the name predates other kinds of state and is
kept for checkpoints) at the weight's path, with the key structure of θ, boxed
with the weight's logical names so it shards like the weight.  Keeping it out
of `params` keeps it away from the optimizer (no moments, no decay, no
gradient); `join_state` merges it into θ right before `apply`.  Inside a
composed node a stage's state sits at that stage's key path in θ (e.g. `u` and
`v` of `lowrank|mask`).
"""

from __future__ import annotations

from typing import Any, Mapping

from reparam_jax.errors import UserError
from reparam_jax.reparam.compose import SlotMapped, Wrapped
from reparam_jax.reparam.matrix import MATRIX, MatrixView
from reparam_jax.rundir.checkpoint import AUX_COLLECTION  # noqa: F401 (where the state lives)


def state_stages(node: Any, theta: Any, prefix: tuple = ()) -> list[tuple[Any, tuple]]:
  """(stage, key path inside θ) for every stage of `node` that has `aux_keys`."""
  if isinstance(node, MatrixView):
    return state_stages(node.inner, theta[MATRIX], prefix + (MATRIX,))
  if isinstance(node, SlotMapped):
    out = state_stages(node.inner, theta, prefix)
    for s in node.inner.slots:
      out += state_stages(node.outer, theta[s], prefix + (s,))
    return out
  if isinstance(node, Wrapped):
    return state_stages(node.inner, theta["base"], prefix + ("base",))
  return [(node, prefix)] if getattr(node, "aux_keys", ()) else []


def has_state(node: Any) -> bool:
  if isinstance(node, MatrixView):
    return has_state(node.inner)
  if isinstance(node, SlotMapped):
    return has_state(node.inner) or has_state(node.outer)
  if isinstance(node, Wrapped):
    return has_state(node.inner)
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
  """The array a stateful stage acts on: its `w`, seen through stages that keep a `w` (quant)."""
  w = stage_theta["w"]
  while isinstance(w, Mapping):
    if "w" not in w:
      raise UserError("a mask must act on a weight-shaped entry; it cannot be followed by a "
                      "stage without a 'w' entry (write e.g. lowrank|mask instead of mask|lowrank)")
    w = w["w"]
  return w


def init_state(node: Any, theta: Any, box_like: Any = None) -> dict:
  """The state tree of one weight (e.g. {'mask': M} or {'u': {'mask': ..}, 'v': {..}}).

  `box_like(leaf_of_theta, value)` boxes each entry like the weight it
  belongs to (same logical names, so the state shards like the weight).
  """
  out: dict = {}
  for stage, kp in state_stages(node, theta):
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


def join_state(node: Any, theta: Any, aux: Any) -> Any:
  """θ with each stateful stage's entries merged in (what `apply` consumes)."""
  if not aux:
    return theta
  for stage, kp in state_stages(node, theta):
    if not _has(aux, kp):
      continue
    extra = {k: v for k, v in get_in(aux, kp).items() if k in stage.aux_keys}
    theta = set_in(theta, kp, {**get_in(theta, kp), **extra})
  return theta
