"""'/'-joined parameter paths ('block_0/mlp/fc_in/kernel') over nested dicts and jax pytrees.

Paths are how configs address parameters (reparameterization, freezing and
regularizer rules), how checkpoints are compared and how Hugging Face
tensors are mapped, so every room uses these helpers rather than its own.
Two views of a tree:

* `key_path` / `flatten_with_paths`: jax's view (any pytree, boxes unwrapped
  into their leaves);
* `dict_leaves` / `subtree` / `set_path` / `unflatten`: nested plain dicts,
  where anything that is not a Mapping (a Flax box included) is a leaf.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax

SEP = "/"


def key_path(path: tuple) -> str:
  """jax key path (`DictKey`, `GetAttrKey`, ...) → 'a/b/c'."""
  return SEP.join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def flatten_with_paths(tree: Any, is_leaf: Any = None) -> list[tuple[str, Any]]:
  """[(path, leaf)] of any pytree, in jax's leaf order."""
  return [(key_path(p), leaf)
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)]


def dict_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(path, leaf) of nested dicts; whatever is not a Mapping (a box too) is a leaf."""
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from dict_leaves(v, f"{prefix}{SEP}{k}" if prefix else str(k))
  else:
    yield prefix, tree


def subtree(tree: Any, path: str) -> Any:
  """The node at `path`, or None if the path does not exist."""
  for k in path.split(SEP):
    if not isinstance(tree, Mapping) or k not in tree:
      return None
    tree = tree[k]
  return tree


def set_path(tree: dict, path: str, value: Any, create: bool = False) -> None:
  """Sets the node at `path` in place (`create`: make missing dicts on the way)."""
  *heads, last = path.split(SEP)
  for h in heads:
    tree = tree.setdefault(h, {}) if create else tree[h]
  tree[last] = value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{path: leaf} → nested dicts."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    set_path(tree, path, value, create=True)
  return tree


def top_level(paths: Any) -> set[str]:
  """The first component of each path."""
  return {p.split(SEP)[0] for p in paths}
