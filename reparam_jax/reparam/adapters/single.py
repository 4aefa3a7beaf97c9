"""One adapter: the trainable leaves of every wrapper stage's θ, taken out, put back, saved.

An adapter is `{leaf path: array}`, e.g. `'block_0/attn/query/kernel/lora_a'`:
the leaves `trainable()` marks inside every θ whose rule has a wrapper stage
(`lora`, `lora|magnitude`, ...); everything else is the base checkpoint.

An adapter may also carry whole ordinary parameters, `modules_to_save` (as
PEFT calls them): a task-specific classifier head trained beside LoRA belongs
to the adapter, not to the shared base.  They are named by regexes matched
against a leaf path or any of its `/`-prefixes (`"classifier"` carries
`classifier/out/kernel`, `classifier/out/bias`, ...); their "no change" value
is the base params' own.

Saving: a path ending in `.npz` is the legacy single-host format (gathered to
this host, one file); any other path is an orbax directory written by
`rundir.checkpoint.save_params`, where every host writes its own shards and a
load restores each leaf straight onto the sharding of the params it goes into.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.pytree.paths import dict_leaves, set_path, subtree, unflatten
from reparam_jax.reparam.api import Reparam
from reparam_jax.reparam.compose import Wrapped, stages
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.matrix import MATRIX, MatrixView
from reparam_jax.reparam.numerics import rms
from reparam_jax.reparam.rules import map_theta, path_key
from reparam_jax.rundir.checkpoint import array_metadata, save_params

PyTree = Any
Adapter = dict  # {leaf path: array}


def has_wrapper(node: Any) -> bool:
  """Whether a rule's node has an adapter (wrapper) stage."""
  return any(getattr(s, "wraps", False) for s in stages(node))


def _trainable_leaves(prefix: str, tree: Any, mask: Any, out: dict) -> None:
  if isinstance(tree, Mapping):
    for k in tree:
      _trainable_leaves(f"{prefix}/{k}", tree[k], mask if isinstance(mask, bool) else mask[k], out)
  elif mask:
    out[prefix] = meta.unbox(tree)


def module_leaves(params: PyTree, modules_to_save: Sequence[str]) -> Adapter:
  """`{path: array}` of every leaf under the modules `modules_to_save` names: each a
  regex matched (in full) against a leaf path or one of its `/`-prefixes."""
  out: Adapter = {}
  leaves = list(dict_leaves(params))
  for pattern in modules_to_save:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise UserError(f"modules_to_save pattern {pattern!r}: {e}") from None
    hits = {p: meta.unbox(v) for p, v in leaves if _under(regex, p)}
    if not hits:
      tops = sorted({p.split("/")[0] for p, _ in leaves})
      raise UserError(f"modules_to_save pattern {pattern!r} matches no parameter (top-level "
                      f"modules: {', '.join(tops)})")
    out.update(hits)
  return out


def _under(regex: re.Pattern, path: str) -> bool:
  parts = path.split("/")
  return any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def extract_adapter(params: PyTree, rp: Reparam, modules_to_save: Sequence[str] = ()
                    ) -> Adapter:
  """`{path: array}` of the trainable leaves of every θ whose rule has a wrapper stage
  (LoRA's A and B, DoRA's magnitude, ...), plus every leaf of `modules_to_save` (e.g. a
  task head, see the module docstring); everything else is the base checkpoint."""
  out: Adapter = {}

  def visit(path, rule, theta):
    if rule is not None and has_wrapper(rule.node):
      _trainable_leaves(path, theta, rule.node.trainable(meta.unbox(theta)), out)
    return theta

  map_theta(rp.plan, params, visit, require_all=True)
  if not out:
    raise UserError("no adapter parameters: config.reparam.rules has no rule with a wrapper "
                    "stage such as lora(...)")
  carried = module_leaves(params, modules_to_save)
  clash = sorted(set(carried) & set(out))
  if clash:
    raise UserError(f"modules_to_save covers adapter leaf {clash[0]}: name only ordinary "
                    "parameters (e.g. the task head), not weights with a lora(...) rule")
  return {**out, **carried}


def _null_theta(node: Any, theta: Any, key: jax.Array) -> Any:
  """θ with every wrapper stage at its own init, which adapters define as "no change"
  (LoRA: B = 0, so W = W₀ exactly); non-wrapper stages (the base) are kept."""
  if isinstance(node, MatrixView):  # an N-D kernel: the adapter is its matrix's
    return {**theta, MATRIX: _null_theta(node.inner, theta[MATRIX], key)}
  if not isinstance(node, Wrapped):
    return theta
  base = _null_theta(node.inner, theta["base"], jax.random.fold_in(key, 0))
  w = materialize(node.inner.apply(base, None))
  # `wrap_own` sees the inner stage: DoRA's magnitude takes the column norm of
  # the null inner weight, so the whole stack is W₀ again.
  own = node.outer.wrap_own(jax.random.fold_in(key, 1), node.inner, base, tuple(w.shape),
                            w.dtype, rms(w))
  return {"base": base, **own}


def null_adapter(params: PyTree, rp: Reparam, modules_to_save: Sequence[str] = ()
                 ) -> Adapter:
  """The adapter that leaves the base model as it is (LoRA: B = 0; `modules_to_save`: the
  values in `params`), with the layout, dtypes and shardings of `params`' own leaves."""
  layout = extract_adapter(params, rp)
  out: Adapter = dict(module_leaves(params, modules_to_save))

  def visit(path, rule, theta):
    if rule is not None and has_wrapper(rule.node):
      raw = meta.unbox(theta)
      null = _null_theta(rule.node, raw, path_key(jax.random.key(0), path))
      _trainable_leaves(path, null, rule.node.trainable(raw), out)
    return theta

  map_theta(rp.plan, params, visit)
  return {p: _like(v, layout[p]) if p in layout else v for p, v in out.items()}


def abstract(adapter: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  """Shape, dtype and sharding of each leaf (what a layout needs, without the values)."""
  return {p: jax.ShapeDtypeStruct(tuple(np.shape(v)), v.dtype,
                                  sharding=getattr(v, "sharding", None))
          for p, v in adapter.items()}


def _like(value: Any, ref: Any) -> Any:
  """`value` with `ref`'s dtype and (for a sharded jax array) its sharding."""
  value = jnp.asarray(value, ref.dtype)
  sharding = getattr(ref, "sharding", None)
  return value if sharding is None else jax.device_put(value, sharding)


def check_fits(adapter: Mapping[str, Any], layout: Mapping[str, Any], what: str = "adapter"
               ) -> None:
  """One-line `UserError` unless every leaf of `adapter` is an adapter leaf of the base
  with the same shape (`layout`: the base's `extract_adapter`)."""
  for path in sorted(adapter):
    if path not in layout:
      known = sorted(layout)
      raise UserError(f"{what} leaf {path} is not among the {len(known)} adapter leaves of the "
                      f"base model (e.g. {known[0]}): another model or other reparam rules?")
    got, want = tuple(np.shape(adapter[path])), tuple(np.shape(layout[path]))
    if got != want:
      raise UserError(f"{what} leaf {path} has shape {got}, the base model expects {want} "
                      "(an adapter of another rank or another base?)")


def insert_adapter(params: PyTree, adapter: Mapping[str, Any]) -> PyTree:
  """`params` with the adapter's leaves put back at their paths (boxes, dtypes kept)."""
  leaves = dict(dict_leaves(params))
  for path in sorted(adapter):
    if path not in leaves:
      raise UserError(f"adapter leaf {path} is not a parameter of the model "
                      "(an adapter for another model or other reparam rules?)")
  out = jax.tree.map(lambda x: x, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  for path, value in adapter.items():
    old = subtree(params, path)
    new = jnp.asarray(value)
    if tuple(new.shape) != tuple(meta.unbox(old).shape):
      raise UserError(f"adapter leaf {path} has shape {tuple(new.shape)}, the model expects "
                      f"{tuple(meta.unbox(old).shape)}")
    new = new.astype(meta.unbox(old).dtype)
    set_path(out, path, old.replace_boxed(new) if isinstance(old, meta.AxisMetadata) else new)
  return out


def write_adapter(path: str, adapter: Mapping[str, Any]) -> None:
  """Writes `{path: array}`: `.npz` (legacy, gathered to this host) or an orbax directory."""
  if str(path).endswith(".npz"):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
      np.savez(f, **{k: np.asarray(jax.device_get(v)) for k, v in adapter.items()})
    return
  save_params(path, unflatten(dict(adapter)))


def read_adapter(path: str, like: Mapping[str, Any]) -> Adapter:
  """Reads an adapter written by `write_adapter`; each orbax leaf is restored onto the
  dtype and sharding of the same path in `like` (the base's adapter leaves)."""
  if str(path).endswith(".npz") and os.path.isfile(path):
    with np.load(path) as data:
      adapter = {k: data[k] for k in data.files}
    check_fits(adapter, like)
    return {k: _like(v, like[k]) for k, v in adapter.items()}
  where = epath.Path(path).absolute()
  if not where.is_dir():
    raise UserError(f"no adapter at {path} (expected an orbax adapter directory written by "
                    "save_adapter, or a legacy .npz file)")
  saved = {p: m for p, m in dict_leaves(array_metadata(where))}
  check_fits({p: np.empty(m.shape, np.bool_) for p, m in saved.items()}, like)

  def target(p: str) -> jax.ShapeDtypeStruct:
    ref = like[p]
    return jax.ShapeDtypeStruct(tuple(ref.shape), ref.dtype,
                                sharding=getattr(ref, "sharding", None))

  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(where, unflatten({p: target(p) for p in saved}))
  return dict(dict_leaves(restored))


def save_adapter(path: str, params: PyTree, rp: Reparam, modules_to_save: Sequence[str] = ()
                 ) -> None:
  """Writes only the adapter (and `modules_to_save`; the module docstring has the formats)."""
  write_adapter(path, extract_adapter(params, rp, modules_to_save))


def load_adapter(path: str, params: PyTree) -> PyTree:
  """`params` (e.g. freshly converted from a base checkpoint) with a saved adapter inserted;
  an orbax adapter's leaves land on the shardings of `params`' leaves at the same paths."""
  if str(path).endswith(".npz") and not os.path.exists(path):
    raise UserError(f"no adapter file at {path}")
  like = {p: meta.unbox(v) for p, v in dict_leaves(params)}
  return insert_adapter(params, read_adapter(path, like))
