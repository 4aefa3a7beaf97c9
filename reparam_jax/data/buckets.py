"""Length-bucketed training batches: short sentences are not padded to the longest.

SST-2 training phrases have a median of 10 pieces but a tail to 64; padding
every batch to 64 would spend most of the compute on padding.  Here each
global batch holds records of one length bucket (e.g. ≤ 16, ≤ 32, ≤ 64
pieces) and is padded only to that bucket's length, so the model compiles
once per bucket and runs ~2–3× fewer token slots.

Order and content are a pure function of (seed, batch position): epoch `e`
shuffles each bucket's records with a generator seeded by (seed, e), cuts
them into full global batches and shuffles the batches; batch `t` then goes
through `build(indices, length, rng)`, with `rng` from grain's `random_map`
(seeded by seed and `t`).  Every host computes the same plan and keeps its
rows, so global batches do not depend on the process count, and the
iterator's state is its position: resume is exact.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np

from reparam_jax.data.pipeline import per_host_batch_size
from reparam_jax.errors import UserError

_EPOCHS = 10_000  # the plan is lazily infinite; this only bounds its nominal length


class _Plan:
  """Global batch `t` → (bucket length, record indices)."""

  def __init__(self, lengths: np.ndarray, buckets: Sequence[int], global_batch: int, seed: int):
    self.buckets = sorted(buckets)
    which = np.searchsorted(self.buckets, np.minimum(lengths, self.buckets[-1]))
    self.members = [np.flatnonzero(which == b) for b in range(len(self.buckets))]
    self.global_batch, self.seed = global_batch, seed
    self.per_epoch = sum(len(m) // global_batch for m in self.members)
    if not self.per_epoch:
      raise UserError(f"no length bucket holds a full batch of {global_batch} records")

  def __len__(self) -> int:
    return self.per_epoch * _EPOCHS

  @functools.lru_cache(maxsize=2)
  def _epoch(self, e: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng((self.seed, e))
    batches = []
    for length, members in zip(self.buckets, self.members):
      order = rng.permutation(members)
      n = len(order) // self.global_batch
      batches += [(length, order[i * self.global_batch:(i + 1) * self.global_batch])
                  for i in range(n)]
    return [batches[i] for i in rng.permutation(len(batches))]

  def __getitem__(self, t: int) -> tuple[int, np.ndarray]:
    return self._epoch(int(t) // self.per_epoch)[int(t) % self.per_epoch]


def bucketed_loader(lengths: np.ndarray, buckets: Sequence[int], global_batch: int, seed: int,
                    build: Callable[[np.ndarray, int, np.random.Generator], dict[str, np.ndarray]]
                    ) -> grain.DatasetIterator:
  """Endless iterator over this host's rows of each length-bucketed global batch.

  `lengths[i]` is record i's padded-to length if it were alone (pieces
  including specials); `build(indices, length, rng)` returns the batch of
  those records padded to `length`.
  """
  per_host = per_host_batch_size(global_batch)
  h = jax.process_index()
  plan = _Plan(np.asarray(lengths), buckets, global_batch, seed)

  def host_batch(item: tuple[int, np.ndarray], rng: np.random.Generator) -> dict[str, Any]:
    length, indices = item
    # The whole global batch is built (same rng draws on every host), then sliced.
    batch = build(indices, length, rng)
    return {k: v[h * per_host:(h + 1) * per_host] for k, v in batch.items()}

  dataset = grain.MapDataset.source(plan).random_map(host_batch, seed=seed)
  return iter(dataset.to_iter_dataset())
