"""LoRA adapters saved and loaded alone: the trainable leaves of every `lora` θ.

An adapter is a few MB for a model of GBs; it is written as one `.npz` of
path → array (small, host-local and meant to be shipped around, so one
portable file is the convenient unit rather than an orbax directory).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.pytree.paths import dict_leaves, set_path, subtree
from reparam_jax.reparam.api import Reparam
from reparam_jax.reparam.rules import map_theta

PyTree = Any


def extract_adapter(params: PyTree, rp: Reparam) -> dict[str, Any]:
  """`{path: array}` of the trainable leaves of every `lora` θ (A, B and anything
  a stage after LoRA made trainable); everything else is the base checkpoint."""
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

  map_theta(rp.plan, params, visit, require_all=True)
  if not out:
    raise UserError("no LoRA parameters: config.reparam.rules has no rule with a lora stage")
  return out


def insert_adapter(params: PyTree, adapter: dict[str, Any]) -> PyTree:
  """`params` with the adapter's leaves put back at their paths (boxes kept)."""
  missing = set(adapter) - {p for p, _ in dict_leaves(params)}
  if missing:
    raise UserError(f"adapter has paths the params do not: {sorted(missing)[:4]}")
  out = jax.tree.map(lambda x: x, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  for path, value in adapter.items():
    new, old = jnp.asarray(value), subtree(params, path)
    if tuple(new.shape) != tuple(meta.unbox(old).shape):
      raise UserError(f"adapter leaf {path} has shape {new.shape}, params expect "
                      f"{meta.unbox(old).shape}")
    set_path(out, path, old.replace_boxed(new) if isinstance(old, meta.AxisMetadata) else new)
  return out


def save_adapter(path: str, params: PyTree, rp: Reparam) -> None:
  """Writes only the adapter as an `.npz` of path → array."""
  adapter = extract_adapter(params, rp)
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
