"""The two layouts of a layer stack: unrolled (`block_{i}/...`) and scanned (`blocks/...`).

An unrolled model keeps one subtree per layer, `block_0`, `block_1`, ...; a
scanned one (`model.scan_layers=True`, `nn.scan` over the blocks) keeps one
`blocks` subtree whose every leaf has a leading layer axis (logical name
`layers`), or, when a layer transform treats some layers differently (a
rule that selects `block_3` alone), one such subtree per run of alike
layers, `blocks_0`, `blocks_3`, `blocks_4`, named by their first layer.
The same parameter is `block_3/attn/query/kernel [D, D]` in the first and row
3 of `blocks/attn/query/kernel [L, D, D]` in the second.

Paths are how configs address parameters, so rules are always written in the
unrolled names (`block_\\d+/...`, `block_3/...`): the *logical* path of row i
of a stack is its `block_{i}` path.  This module converts trees between the
layouts (checkpoints, Hugging Face imports and exports are unrolled; a scanned
run starts from them and writes them) and splits / restacks one stack's
subtree so per-parameter code can visit it layer by layer.

Boxed leaves (`nn.Partitioned`) keep their logical names: a stacked box has
`layers` first, its rows do not.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

STACK = "blocks"  # the scanned stack's module name
LAYER_AXIS = "layers"  # its leading axis' logical name (a row of the sharding rules table)
_LAYER_KEY = re.compile(r"block_(\d+)")
# A stack split into runs (`stack_name`): `blocks_{first layer}` each.
_STACK_KEY = re.compile(r"blocks(?:_(\d+))?")
# A path inside a layer of either layout; the top-level reparameterization skips these
# when the layers compute their own effective weights.
LAYER_PATH = re.compile(r"(^|.*/)(block_\d+|blocks(?:_\d+)?)(/.*|$)")


def layer_name(i: int) -> str:
  return f"block_{i}"


def stack_name(start: int, whole: bool) -> str:
  """The module name of a scanned run of layers from `start`: `blocks` for the whole
  stack, `blocks_{start}` for one of several runs (layers that differ, e.g. a rule
  reparameterizes only `block_3`, are scanned in separate runs)."""
  return STACK if whole else f"{STACK}_{start}"


def stack_start(key: Any) -> int | None:
  """The first layer of the stack named `key`; None if `key` names no stack."""
  m = _STACK_KEY.fullmatch(str(key))
  return None if m is None else int(m.group(1) or 0)


def is_stack(key: Any, node: Any) -> bool:
  return stack_start(key) is not None and isinstance(node, Mapping)


def _leaves(tree: Any) -> list[Any]:
  if isinstance(tree, Mapping):
    return [x for v in tree.values() for x in _leaves(v)]
  return [tree]


def stack_depth(stack: Mapping) -> int | None:
  """Number of layers of a stacked subtree (the leading axis of its leaves); None when
  no leaf is an array (e.g. optax's `MaskedNode` placeholders only)."""
  for leaf in _leaves(stack):
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    if hasattr(value, "shape") and len(value.shape):
      return int(value.shape[0])
  return None


def _row(leaf: Any, i: int) -> Any:
  if isinstance(leaf, nn.Partitioned):
    names = tuple(leaf.names)
    return leaf.replace(value=leaf.value[i], names=names[1:] if names else names)
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
  if leaf is None or not hasattr(leaf, "shape"):
    return leaf
  return leaf[i]


def _stack(rows: Sequence[Any]) -> Any:
  first = rows[0]
  if isinstance(first, nn.Partitioned):
    value = _stack([r.value for r in rows])
    return first.replace(value=value, names=(LAYER_AXIS,) + tuple(first.names))
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(rows),) + tuple(first.shape), first.dtype)
  if isinstance(first, np.ndarray) and all(isinstance(r, np.ndarray) for r in rows):
    return np.stack(rows)
  if hasattr(first, "shape") and hasattr(first, "dtype"):
    return jnp.stack(rows)
  # Python values (a mask's bools, a report's labels): one for the stack when all agree.
  if all(r == first for r in rows[1:]):
    return first
  raise ValueError(f"cannot stack per-layer values that differ: {rows[:4]}")


def layer_of(stack: Any, i: int) -> Any:
  """Layer i of a stacked subtree (slices; boxes lose their `layers` name)."""
  if isinstance(stack, Mapping):
    return {k: layer_of(v, i) for k, v in stack.items()}
  return _row(stack, i)


def split_stack(stack: Mapping) -> list[Any]:
  """A stacked subtree → one subtree per layer."""
  depth = stack_depth(stack)
  if depth is None:
    raise ValueError("a layer stack without arrays has no layers to split")
  return [layer_of(stack, i) for i in range(depth)]


def join_stack(per_layer: Sequence[Any]) -> Any:
  """One subtree per layer (same structure) → the stacked subtree; inverse of `split_stack`."""
  first = per_layer[0]
  if isinstance(first, Mapping):
    missing = [i for i, t in enumerate(per_layer) if set(t) != set(first)]
    if missing:
      raise ValueError(f"layer {missing[0]} has entries {sorted(per_layer[missing[0]])} but "
                       f"layer 0 has {sorted(first)}; a scanned stack needs the same tree "
                       "in every layer")
    return {k: join_stack([t[k] for t in per_layer]) for k in first}
  return _stack(list(per_layer))


def unstack_layers(tree: Any) -> Any:
  """Every stack (`blocks`, or runs `blocks_{start}`) → `block_0 ... block_{L-1}` (the
  unrolled layout)."""
  if not isinstance(tree, Mapping):
    return tree
  out: dict = {}
  for k, v in tree.items():
    if is_stack(k, v):
      for i, layer in enumerate(split_stack(v)):
        out[layer_name(stack_start(k) + i)] = layer
    else:
      out[k] = unstack_layers(v)
  return out


def stack_layers(tree: Any, reference: Any = None) -> Any:
  """Every set of `block_0 ... block_{L-1}` siblings → one `blocks` subtree (scanned
  layout), or the runs `blocks_{start}` the same place in `reference` has."""
  if not isinstance(tree, Mapping):
    return tree
  ref = reference if isinstance(reference, Mapping) else {}
  layers = sorted((int(m.group(1)), k) for k in tree if (m := _LAYER_KEY.fullmatch(str(k))))
  out = {k: stack_layers(v, ref.get(k))
         for k, v in tree.items() if not _LAYER_KEY.fullmatch(str(k))}
  if layers:
    indices = [i for i, _ in layers]
    if indices != list(range(len(layers))):
      raise ValueError(f"layers {indices} are not block_0 ... block_{len(layers) - 1}; "
                       "cannot stack them")
    starts = sorted(stack_start(k) for k, v in ref.items() if is_stack(k, v)) or [0]
    for start, stop in zip(starts, starts[1:] + [len(layers)]):
      out[stack_name(start, len(starts) == 1)] = join_stack(
          [tree[layer_name(i)] for i in range(start, stop)])
  return out


def has_stack(tree: Any) -> bool:
  if not isinstance(tree, Mapping):
    return False
  return any(is_stack(k, v) or has_stack(v) for k, v in tree.items())


def has_unrolled(tree: Any) -> bool:
  if not isinstance(tree, Mapping):
    return False
  return any(_LAYER_KEY.fullmatch(str(k)) or has_unrolled(v) for k, v in tree.items())


def like(tree: Any, reference: Any) -> Any:
  """`tree` in `reference`'s layout: stacked if the reference is scanned, unrolled if not.

  A checkpoint written by an unrolled run (or a Hugging Face import) starts a
  scanned run, and the other way round.
  """
  if has_stack(reference):
    if has_stack(tree) and _stack_paths(tree) == _stack_paths(reference):
      return tree
    if has_stack(tree) or has_unrolled(tree):  # unrolled, or scanned in other runs
      return stack_layers(unstack_layers(tree), reference)
    return tree
  if has_stack(tree):
    return unstack_layers(tree)
  return tree


def _stack_paths(tree: Any, prefix: str = "") -> set[str]:
  if not isinstance(tree, Mapping):
    return set()
  out: set[str] = set()
  for k, v in tree.items():
    out |= {f"{prefix}{k}"} if is_stack(k, v) else _stack_paths(v, f"{prefix}{k}/")
  return out
