"""Fixed-length encoder inputs: `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`, plus NSP pairs.

Next-sentence prediction pairs (Devlin et al. 2019): for segment A, half the
time B is the segment that follows A in its document (label 0, IsNext, as in
BERT and `transformers`), half the time a segment drawn uniformly from a
*different* document (label 1, NotNext).  Only
segments that have a successor are used as A, so the true-next share is
exactly the coin's 50%.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reparam_jax.objectives.nsp import IS_NEXT, IS_RANDOM


@dataclasses.dataclass(frozen=True)
class Specials:
  """Ids of the pieces the encoder's input format needs."""
  pad: int
  cls: int
  sep: int
  mask: int
  never_mask: tuple[int, ...]  # ids never chosen for masking nor as random replacements
  vocab_size: int

  def random_ids(self) -> np.ndarray:
    keep = np.ones(self.vocab_size, bool)
    keep[list(self.never_mask)] = False
    return np.flatnonzero(keep).astype(np.int32)


def pack(a: np.ndarray, b: np.ndarray | None, seq_len: int,
         sp: Specials) -> dict[str, np.ndarray]:
  """`[CLS] a [SEP] (b [SEP])` padded to `seq_len`; the longer part is truncated first."""
  budget = seq_len - (3 if b is not None else 2)
  a, b = list(a), (list(b) if b is not None else None)
  while len(a) + (len(b) if b is not None else 0) > budget:
    (a if b is None or len(a) >= len(b) else b).pop()
  ids = [sp.cls, *a, sp.sep]
  types = [0] * len(ids)
  if b is not None:
    ids += [*b, sp.sep]
    types += [1] * (len(b) + 1)
  n = len(ids)
  out_ids = np.full(seq_len, sp.pad, np.int32)
  out_types = np.zeros(seq_len, np.int32)
  out_ids[:n], out_types[:n] = ids, types
  return {"ids": out_ids, "token_types": out_types, "padding_mask": np.arange(seq_len) < n}


class NspPairs:
  """Segments grouped into documents; `pair(k, rng)` builds the k-th NSP example."""

  def __init__(self, documents: list[list[np.ndarray]]):
    self.segments = [s for doc in documents for s in doc]
    self.doc_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(documents)])
    starts = np.cumsum([0] + [len(d) for d in documents])
    # A may be any segment but the last of its document.
    self.firsts = np.concatenate([np.arange(s, e - 1) for s, e in zip(starts[:-1], starts[1:])
                                  if e - s > 1]).astype(np.int64)
    if len(documents) < 2 or not len(self.firsts):
      raise ValueError("NSP needs at least two documents and one with two segments")

  def __len__(self) -> int:
    return len(self.firsts)

  def pair(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    i = int(self.firsts[k])
    if rng.random() < 0.5:
      return self.segments[i], self.segments[i + 1], IS_NEXT
    while True:  # rejection: a segment of another document (cheap: documents are many)
      j = int(rng.integers(len(self.segments)))
      if self.doc_of[j] != self.doc_of[i]:
        return self.segments[i], self.segments[j], IS_RANDOM
