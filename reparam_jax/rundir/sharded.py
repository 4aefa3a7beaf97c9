"""Whole-checkpoint tools on many hosts: every array split over every process's devices.

`convert`, `compress`, adapter save/load and export read a checkpoint,
transform it and write one.  Gathered to one host (`device_get`, or a
restore onto one device) that stops working at pod scale: a 7B model's fp32
weights alone are 28 GB on every host.  Here instead each array is *stored*
split along one of its dimensions over all devices of all processes (a 1-D
mesh); orbax reads and writes each process's own shards, and transforms run
under `jax.jit` with their outputs split the same way.  Arrays no dimension
of which the device count divides (a bias of odd width, a scalar) stay
replicated: they are small.

The storage layout needs no model: a tool that has only a checkpoint (no
config, no rules table) can still spread it.  A tool that knows the model's
shardings passes them to `checkpoint.load_params(abstract_params=...)`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
AXIS = "shards"  # the one axis of the storage mesh: every device of every process


def storage_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def storage_sharding(shape: tuple[int, ...], mesh: Mesh | None = None) -> NamedSharding:
  """Split along the largest dimension the device count divides; replicated if none does."""
  mesh = storage_mesh() if mesh is None else mesh
  n = mesh.shape[AXIS]
  fits = [i for i, d in enumerate(shape) if d % n == 0] if n > 1 else []
  spec = [None] * len(shape)
  if fits:
    spec[max(fits, key=lambda i: shape[i])] = AXIS
  return NamedSharding(mesh, PartitionSpec(*spec))


def abstract_spread(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
  """`ShapeDtypeStruct`s of `tree`'s arrays (or array metadata) with storage shardings."""
  mesh = storage_mesh() if mesh is None else mesh
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype,
                                     sharding=storage_sharding(tuple(x.shape), mesh)),
      tree, is_leaf=is_array)


def apply_spread(fn: Callable[..., PyTree], *args: Any) -> PyTree:
  """`fn(*args)` compiled, its outputs in the storage layout (no host gathers them)."""
  out_shapes = jax.eval_shape(fn, *args)
  shardings = jax.tree.map(lambda s: s.sharding, abstract_spread(out_shapes))
  return jax.jit(fn, out_shardings=shardings)(*args)


def reshard(x: Any, sharding: jax.sharding.Sharding, dtype: Any = None) -> jax.Array:
  """`x` (a global array split any way, or host data) on `sharding`, cast to `dtype`.

  A global array that spans several processes cannot be `device_put` onto
  another layout everywhere; a compiled identity moves it with collectives.
  """
  dtype = x.dtype if dtype is None else dtype
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.jit(lambda a: a.astype(dtype), out_shardings=sharding)(x)
  return jax.device_put(jax.numpy.asarray(x, dtype), sharding)


def spread(tree: PyTree) -> PyTree:
  """`tree`'s arrays in the storage layout.  Host data, or an array on this process's
  devices alone, must hold the same values on every process (as `jax.device_put` assumes)."""
  return jax.tree.map(lambda x: reshard(x, storage_sharding(tuple(np.shape(x)))), tree)


def host_copy(x: Any) -> np.ndarray:
  """One array whole on this host (a collective: every process calls it for the same array).

  For writers that need whole tensors (safetensors files): gathering them one
  at a time keeps a host's memory at one tensor, never the whole tree.
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def host_share(tree: PyTree) -> float:
  """Bytes of `tree` this process holds (its distinct shards) ÷ the tree's bytes.

  1.0 for a tree gathered to this host; ≈ 1 / process count for a spread one.
  """
  held = total = 0
  for x in jax.tree.leaves(tree):
    total += int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
    if isinstance(x, jax.Array):
      seen = {}
      for shard in x.addressable_shards:
        seen[_index_key(shard.index)] = shard.data.nbytes
      held += sum(seen.values())
    else:
      held += int(np.asarray(x).nbytes)
  return held / max(total, 1)


def _index_key(index: tuple) -> tuple:
  return tuple((s.start, s.stop) if isinstance(s, slice) else s for s in index)


def is_array(x: Any) -> bool:
  """An array, an abstract one or orbax's metadata of one (a leaf with shape and dtype)."""
  return hasattr(x, "shape") and hasattr(x, "dtype")
