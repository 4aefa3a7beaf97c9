"""Reparameterizations of a Flax model's weights, selected by config rules.

The trainer's contract (all pure functions of the params tree and
`config.reparam`; `params` is the `'params'` collection, boxed or unboxed,
concrete or abstract):

  wrap(module, reparam_cfg) -> nn.Module
  penalty(params, reparam_cfg, step) -> (total, {name: term})
  post_update(params, reparam_cfg) -> params
  trainable_mask(params, reparam_cfg) -> pytree of bool
  report_rows(params, reparam_cfg, tokens_per_seq=None) -> [row]; format_report(rows) -> str

See docs/reparam.md for the math of each transform, the rule mini-language
and how to add a transform.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import (
  TRANSFORMS,
  LatentKernel,
  LoRAKernel,
  LowRankKernel,
  Transform,
  WrapperTransform,
  compose,
  materialize,
  register,
)
from reparam_jax.reparam.intercept import dense_to_theta, effective, wrap
from reparam_jax.reparam.rules import Plan, map_theta, parse_spec
from reparam_jax.reparam.stats import format_report, report_rows, weight_stats
from reparam_jax.reparam.transforms import lora as _lora

__all__ = [
    "TRANSFORMS", "LoRAKernel", "LatentKernel", "LowRankKernel", "Plan", "Transform",
    "WrapperTransform", "compose", "dense_to_theta", "effective", "extract_adapter",
    "format_report", "freeze_optimizer", "insert_adapter", "load_adapter", "materialize",
    "parse_spec", "penalty", "post_update", "register", "report_rows", "save_adapter",
    "trainable_mask", "weight_stats", "wrap", "has_aux_state", "update_extra",
]

PyTree = Any


def _rebox(orig: Any, new: Any) -> Any:
  """`new` (unboxed arrays) in the boxes of `orig` (which may be unboxed)."""
  return jax.tree.map(lambda o, n: o.replace_boxed(n) if isinstance(o, meta.AxisMetadata) else n,
                      orig, new, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def penalty(params: PyTree, reparam_cfg: Any, step: jax.Array | int
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum of the transforms' penalties (weighted and annealed), and each term by name.

  Terms are summed over all weights of a transform, e.g. `{'variational/kl': ...}`.
  """
  plan = Plan.from_config(reparam_cfg)
  terms: dict[str, jax.Array] = {}

  def visit(path, rule, theta):
    if rule is not None:
      for k, v in rule.node.penalty(meta.unbox(theta), step).items():
        terms[k] = terms[k] + v if k in terms else v
    return theta

  map_theta(plan, params, visit)
  total = sum(terms.values(), jnp.zeros((), jnp.float32))
  return total, terms


def has_aux_state(reparam_cfg: Any) -> bool:
  """Whether any rule has a stage with non-trainable state (a sparsity mask)."""
  from reparam_jax.reparam.transforms.mask import has_aux  # noqa: PLC0415
  return any(has_aux(r.node) for r in Plan.from_config(reparam_cfg).rules)


def update_extra(params: PyTree, grads: PyTree, extra: PyTree, step: jax.Array,
                 reparam_cfg: Any) -> tuple[PyTree, dict[str, jax.Array]]:
  """Scheduled mask/score updates inside the train step (reparam_jax/sparsity/update.py).

  `params` and `grads` are the step's (pre-update) θ and its gradient; returns
  the new non-param collections and metrics (`sparsity`).
  """
  from reparam_jax.reparam.transforms.mask_update import update_extra as _update  # noqa: PLC0415
  return _update(params, grads, extra, step, reparam_cfg)


def post_update(params: PyTree, reparam_cfg: Any) -> PyTree:
  """Params after each transform's post-optimizer-step hook (e.g. re-projection to a sphere)."""
  plan = Plan.from_config(reparam_cfg)

  def visit(path, rule, theta):
    if rule is None:
      return theta
    return _rebox(theta, rule.node.post_update(meta.unbox(theta)))

  return map_theta(plan, params, visit)


def trainable_mask(params: PyTree, reparam_cfg: Any) -> PyTree:
  """True where the optimizer updates the leaf (boxes count as leaves).

  Unmatched parameters are trainable; add a `('.*', 'frozen')` rule last to
  freeze everything no earlier rule adapts (the usual LoRA fine-tune).
  """
  plan = Plan.from_config(reparam_cfg)

  def visit(path, rule, theta):
    if rule is None:
      return True
    return _bool_tree(theta, rule.node.trainable(meta.unbox(theta)))

  return map_theta(plan, params, visit)


def _bool_tree(theta: Any, mask: Any) -> Any:
  """`mask` shaped like `theta`; a single bool covers a whole subtree."""
  if isinstance(mask, (bool, np.bool_)):
    if isinstance(theta, Mapping):
      return {k: _bool_tree(v, mask) for k, v in theta.items()}
    return bool(mask)
  return {k: _bool_tree(theta[k], mask[k]) for k in theta}


def freeze_optimizer(tx: optax.GradientTransformation, params: PyTree, reparam_cfg: Any
                     ) -> optax.GradientTransformation:
  """`tx` on trainable leaves; frozen leaves get zero updates and no optimizer state."""
  labels = jax.tree.map(lambda t: "train" if t else "freeze",
                        trainable_mask(params, reparam_cfg))
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


# ---------------------------------------------------------------------------
# LoRA adapters: save/load only the trainable adapter leaves.


def extract_adapter(params: PyTree, reparam_cfg: Any) -> dict[str, Any]:
  """`{path: array}` of the trainable leaves of every `lora` θ (A, B and anything
  a stage after LoRA made trainable); everything else is the base checkpoint."""
  plan = Plan.from_config(reparam_cfg)
  out: dict[str, Any] = {}

  def collect(prefix, tree, mask):
    if isinstance(tree, dict):
      for k in tree:
        collect(f"{prefix}/{k}", tree[k], mask if isinstance(mask, bool) else mask[k])
    elif mask:
      out[prefix] = meta.unbox(tree)

  def visit(path, rule, theta):
    if rule is not None and "lora" in rule.spec:
      collect(path, theta, rule.node.trainable(meta.unbox(theta)))
    return theta

  map_theta(plan, params, visit, require_all=True)
  if not out:
    raise UserError("no LoRA parameters: config.reparam.rules has no rule with a lora stage")
  return out


def insert_adapter(params: PyTree, adapter: dict[str, Any]) -> PyTree:
  """`params` with the adapter's leaves put back at their paths (boxes kept)."""
  def rec(tree, prefix):
    if isinstance(tree, dict):
      return {k: rec(v, f"{prefix}/{k}" if prefix else k) for k, v in tree.items()}
    if prefix in adapter:
      new = jnp.asarray(adapter[prefix])
      old = meta.unbox(tree)
      if tuple(new.shape) != tuple(old.shape):
        raise UserError(f"adapter leaf {prefix} has shape {new.shape}, params expect {old.shape}")
      return tree.replace_boxed(new) if isinstance(tree, meta.AxisMetadata) else new
    return tree
  missing = set(adapter) - {p for p in _paths(params)}
  if missing:
    raise UserError(f"adapter has paths the params do not: {sorted(missing)[:4]}")
  return rec(params, "")


def _paths(tree: Any, prefix: str = ""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _paths(v, f"{prefix}/{k}" if prefix else k)
  else:
    yield prefix


def save_adapter(path: str, params: PyTree, reparam_cfg: Any) -> None:
  """Writes only the adapter (a few MB for a model of GBs) as an `.npz` of path → array.

  npz rather than an orbax directory: an adapter is small, host-local and
  meant to be shipped around; one portable file is the convenient unit.
  """
  adapter = extract_adapter(params, reparam_cfg)
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(jax.device_get(v)) for k, v in adapter.items()})


def load_adapter(path: str, params: PyTree) -> PyTree:
  """`params` (e.g. freshly converted from a base checkpoint) with a saved adapter inserted."""
  if not os.path.exists(path):
    raise UserError(f"no adapter file at {path}")
  with np.load(path) as data:
    adapter = {k: data[k] for k in data.files}
  return insert_adapter(params, adapter)


def merge_lora(params: PyTree, reparam_cfg: Any) -> PyTree:
  """Dense params: every reparameterized weight (LoRA merged into W₀) materialized."""
  from reparam_jax.convert import reparam_to_dense  # noqa: PLC0415
  return reparam_to_dense(params, reparam_cfg)


lora_merge = _lora.merge
lora_unmerge = _lora.unmerge
