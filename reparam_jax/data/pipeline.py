"""grain input pipelines and the host → global-array step.

Every host reads only its own rows of each global batch and `to_global`
stitches the per-host numpy batches into one sharded `jax.Array`.
Order depends only on the seed; the iterator's state is a tiny dict that the
checkpoint stores alongside the model, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from reparam_jax.errors import UserError


# How grain reads a stream of single documents ahead (16 threads, as grain's default).
# Its default buffer holds 500 elements, and on every element the prefetcher counts
# how many at the front are ready: for elements as small as a document that count
# was 60 % of the first_fit loader's time on one core (bench.data_pipeline).  64
# documents are still several batches ahead.
DOCUMENT_READ_OPTIONS = grain.ReadOptions(num_threads=16, prefetch_buffer_size=64)


def per_host_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise UserError(f"batch_size {global_batch} is not divisible by the {jax.process_count()} "
                    "processes; choose a multiple")
  return global_batch // jax.process_count()


def train_loader(source: Any, global_batch: int, seed: int,
                 random_transform: Any = None) -> grain.DatasetIterator:
  """An endless, shuffled, batched iterator over this host's rows of each global batch.

  Global batch `t` is records `order[t·B : (t+1)·B]` of one seeded
  permutation per epoch; host `h` of `n` reads rows `[h·B/n, (h+1)·B/n)` of
  it and nothing else.  So the global batches — and the losses — are the
  same whatever the number of processes, and each host reads only its share.
  """
  n, h = jax.process_count(), jax.process_index()
  per_host = per_host_batch_size(global_batch)
  dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  if random_transform is not None:
    # `fn(record, rng)` with rng seeded by (seed, position in the endless
    # stream): e.g. fresh MLM masks every epoch, identical after a resume.
    dataset = dataset.random_map(random_transform, seed=seed)
  # Per-host batch `t·n + h` holds exactly host h's rows of global batch t.
  dataset = dataset.batch(per_host, drop_remainder=True)[h::n]
  return iter(dataset.to_iter_dataset())


def host_slice(global_rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This host's contiguous share of a batch every host built identically."""
  n = jax.process_count()
  i = jax.process_index()
  out = {}
  for k, v in global_rows.items():
    rows = v.shape[0] // n
    out[k] = v[i * rows:(i + 1) * rows]
  return out


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, Any]:
  """Per-host numpy batch → global `jax.Array`s sharded along the batch axis."""
  def put(x: np.ndarray) -> jax.Array:
    spec = sharding.spec[:x.ndim]
    s = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.make_array_from_process_local_data(s, x)
  return {k: put(np.asarray(v)) for k, v in batch.items()}


def prepare_once(fn: Any, *args: Any, **kwargs: Any) -> Any:
  """Runs a dataset preparation step on process 0 first, then everywhere.

  TFDS preparation writes files; concurrent writers on a shared filesystem
  would race, so the others wait and then find the dataset prepared.
  """
  result = None
  if jax.process_index() == 0:
    result = fn(*args, **kwargs)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("reparam_jax:prepare_data")
  if jax.process_index() != 0:
    result = fn(*args, **kwargs)
  return result
