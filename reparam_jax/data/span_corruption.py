"""T5's span corruption (Raffel et al. 2020, §3.1.4), done on the host in numpy.

A raw window of tokens gets `round(n · noise_density)` noise tokens laid out
in `round(num_noise / mean_span)` runs.  The inputs keep the other tokens,
each noise run replaced by one sentinel; the targets list each run after its
sentinel.  Both end with EOS.  The corrupted lengths depend only on the raw
length, so `raw_length_for` picks the raw window that fills a fixed inputs
length exactly, with T5's `random_spans_helper`'s figures (including its
special case at noise density 0.5, which makes the targets length equal the
inputs length).

All randomness comes from the `np.random.Generator` the caller passes: the
train pipeline's `random_map` seeds it from (seed, element index) and
`eval_batches` from (seed, window index), so masks are the same after a resume.

Over a prepared corpus (`corpus_rows`) the documents become raw windows in one
of two ways (`data.packing`): "concat" concatenates them and cuts windows of
exactly the raw length (T5's `reduce_concat_tokens` + `split_tokens`; a window
may span two documents), "first_fit" cuts each document into windows of at
most the raw length, corrupts each alone and packs the corrupted examples
first-fit into rows with segment ids, so that no attention (encoder, decoder or
cross) reaches another document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

import grain

from reparam_jax.data.pipeline import DOCUMENT_READ_OPTIONS, host_slice, per_host_batch_size
from reparam_jax.errors import UserError


def _check_rates(noise_density: float, mean_span: float) -> None:
  if not 0.0 < noise_density < 1.0:
    raise UserError(f"noise_density must be in (0, 1), got {noise_density}")
  if mean_span < 1.0:
    raise UserError(f"mean_span must be >= 1, got {mean_span}")


def _check_sentinels(raw_length: int, num_spans: int, sentinel_ids: Sequence[int]) -> None:
  if num_spans > len(sentinel_ids):
    raise UserError(f"windows of {raw_length} tokens get {num_spans} noise spans but only "
                    f"{len(sentinel_ids)} sentinel ids were given; pass more sentinel ids")


def split_lengths(raw_length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
  """(number of noise tokens, number of noise spans) for a raw window of `raw_length` tokens."""
  _check_rates(noise_density, mean_span)
  raw_length = int(raw_length)
  if raw_length < 2:
    raise UserError(f"span corruption needs windows of at least 2 tokens, got {raw_length}")
  # Python's round is half-to-even, like the tf.round of T5's reference code.
  num_noise = min(max(round(raw_length * noise_density), 1), raw_length - 1)
  num_spans = max(1, round(num_noise / mean_span))
  # Each span needs one noise token and (the sequence starts with one) one non-noise token.
  return num_noise, min(num_spans, num_noise, raw_length - num_noise)


def corrupted_lengths(raw_length: int, noise_density: float,
                      mean_span: float) -> tuple[int, int]:
  """(inputs length, targets length) of a corrupted raw window, EOS included in both."""
  num_noise, num_spans = split_lengths(raw_length, noise_density, mean_span)
  return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length_for(inputs_length: int, noise_density: float,
                   mean_span: float) -> tuple[int, int]:
  """(raw length, targets length) for `inputs_length`, as T5's `random_spans_helper`.

  The raw length is the largest whose corrupted inputs fit `inputs_length`,
  with its corrupted targets length; except at noise_density 0.5 when those
  targets come out longer than those inputs: then, as in T5, one raw token
  less and one targets slot less (inputs_length 512, mean span 3: 766 raw
  tokens and 512 targets rather than 767 and 513).  That targets length is
  an upper bound, one more than the corrupted targets for some lengths
  (`make_transform` pads the rest).
  """
  shortest = corrupted_lengths(2, noise_density, mean_span)[0]  # 1 kept token, 1 span, EOS
  if inputs_length < shortest:
    raise UserError(f"inputs_length {inputs_length} is too short for span corruption; "
                    f"use at least {shortest}")
  # Both corrupted lengths are non-decreasing in the raw length, so the first
  # raw length whose successor overflows is the largest that fits.
  raw = 2
  while corrupted_lengths(raw + 1, noise_density, mean_span)[0] <= inputs_length:
    raw += 1
  fitted_inputs, targets = corrupted_lengths(raw, noise_density, mean_span)
  # T5's "minor hack to get the targets length to be equal to inputs length", which is
  # more likely a round number.  (It never fires at raw = 2, whose lengths are (3, 3).)
  if noise_density == 0.5 and targets > fitted_inputs:
    raw, targets = raw - 1, targets - 1
  return raw, targets


def _segment(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly random composition of `total` into `parts` positive integers."""
  cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False) + 1)
  return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(raw_length: int, noise_density: float, mean_span: float,
               rng: np.random.Generator) -> np.ndarray:
  """bool [raw_length]: non-noise and noise runs alternating, starting with non-noise."""
  num_noise, num_spans = split_lengths(raw_length, noise_density, mean_span)
  noise = _segment(num_noise, num_spans, rng)
  keep = _segment(raw_length - num_noise, num_spans, rng)
  run_lengths = np.stack([keep, noise], axis=1).reshape(-1)
  return np.repeat(np.tile([False, True], num_spans), run_lengths)


def _corrupt(tokens: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int],
             eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs, targets, target span ids) for a given noise mask; span ids are k+1 or 0 (EOS)."""
  tokens = np.asarray(tokens, np.int32)
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  num_spans = int(starts.sum())
  sentinels = np.asarray(sentinel_ids[:num_spans], np.int32)
  span_of = np.cumsum(starts)  # k+1 on span k's tokens (and on the non-noise run after it)
  replaced = tokens.copy()
  replaced[starts] = sentinels
  inputs = np.append(replaced[~mask | starts], np.int32(eos_id))
  # Where each span starts within the concatenated noise tokens.
  offsets = np.flatnonzero(starts[mask])
  targets = np.append(np.insert(tokens[mask], offsets, sentinels), np.int32(eos_id))
  target_spans = np.append(np.insert(span_of[mask], offsets, np.arange(1, num_spans + 1)), 0)
  return inputs.astype(np.int32), targets.astype(np.int32), target_spans.astype(np.int32)


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, *, noise_density: float,
                 mean_span: float, sentinel_ids: Sequence[int],
                 eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) int32 of one raw window: noise spans → sentinels in the inputs;
  each sentinel followed by its span in the targets; both end with `eos_id`."""
  _, num_spans = split_lengths(len(tokens), noise_density, mean_span)
  _check_sentinels(len(tokens), num_spans, sentinel_ids)  # before drawing: fails on every window
  mask = noise_mask(len(tokens), noise_density, mean_span, rng)
  inputs, targets, _ = _corrupt(tokens, mask, sentinel_ids, eos_id)
  return inputs, targets


class SpanCorruptionSource:
  """Record `i` is the raw window `tokens[i : i + raw_length]` (every offset, like WindowSource)."""

  def __init__(self, tokens: np.ndarray, raw_length: int):
    if len(tokens) < raw_length:
      raise UserError(f"text of {len(tokens)} tokens is too short for raw windows of "
                      f"{raw_length} tokens")
    self._tokens = tokens
    self._length = raw_length

  def __len__(self) -> int:
    return len(self._tokens) - self._length + 1

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"tokens": self._tokens[i:i + self._length]}


def make_transform(*, inputs_length: int, targets_length: int, noise_density: float,
                   mean_span: float, sentinel_ids: Sequence[int], eos_id: int,
                   pad_id: int) -> Callable[[dict, np.random.Generator], dict]:
  """`fn(record, rng)` for `train_loader(random_transform=...)`: fixed-shape corrupted example."""
  _check_rates(noise_density, mean_span)
  sentinel_ids = tuple(int(s) for s in sentinel_ids)

  def fn(record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = record["tokens"]
    n_in, n_tgt = corrupted_lengths(len(raw), noise_density, mean_span)
    if n_in > inputs_length or n_tgt > targets_length:
      raise UserError(f"raw windows of {len(raw)} tokens corrupt to inputs {n_in} / targets "
                      f"{n_tgt}, over inputs_length {inputs_length} / targets_length "
                      f"{targets_length}; take both lengths from raw_length_for")
    _, num_spans = split_lengths(len(raw), noise_density, mean_span)
    _check_sentinels(len(raw), num_spans, sentinel_ids)
    mask = noise_mask(len(raw), noise_density, mean_span, rng)
    inputs, targets, spans = _corrupt(raw, mask, sentinel_ids, eos_id)
    out_in = np.full(inputs_length, pad_id, np.int32)
    out_in[:n_in] = inputs
    out_tgt = np.full(targets_length, pad_id, np.int32)
    out_tgt[:n_tgt] = targets
    out_spans = np.zeros(targets_length, np.int32)
    out_spans[:n_tgt] = spans
    # T5's decoder starts from the pad id and sees the targets shifted right by one.
    decoder_inputs = np.concatenate([np.full(1, pad_id, np.int32), out_tgt[:-1]])
    return {"inputs": out_in, "inputs_mask": np.arange(inputs_length) < n_in,
            "targets": out_tgt, "decoder_inputs": decoder_inputs,
            "target_weights": (np.arange(targets_length) < n_tgt).astype(np.float32),
            "target_spans": out_spans}

  return fn


def _corrupt_piece(record: dict[str, Any], rng: np.random.Generator, *, noise_density: float,
                   mean_span: float, sentinel_ids: Sequence[int], eos_id: int,
                   offset: int) -> dict[str, np.ndarray]:
  """One document window → its unpadded (inputs, targets); token ids shifted by `offset`.
  A mixture's window also keeps its raw tokens' folder (`raw_source`, folder + 1)."""
  inputs, targets = span_corrupt(np.asarray(record["tokens"], np.int32) + offset, rng,
                                 noise_density=noise_density, mean_span=mean_span,
                                 sentinel_ids=sentinel_ids, eos_id=eos_id)
  out = {"inputs": inputs, "targets": targets}
  if "source" in record:
    out["raw_source"] = np.asarray(record["source"], np.int32) + 1
  return out


class _Windows(grain.experimental.FlatMapTransform):
  """A document as consecutive windows of at most `raw_length` tokens (a 1-token tail,
  which cannot be corrupted, is dropped)."""

  max_fan_out = 1 << 20  # not a bound grain's iterator enforces; documents may be long

  def __init__(self, raw_length: int):
    self.raw_length = raw_length

  def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(element["tokens"])
    return [{k: v[i:i + self.raw_length] for k, v in element.items()}
            for i in range(0, n, self.raw_length) if n - i >= 2]


def packed_rows(row: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
  """A first-fit packed row (grain's `*_segment_ids`) → the task's batch fields; the
  decoder inputs are each example's targets shifted right, from `pad_id`."""
  targets, seg_t = row["targets"], row["targets_segment_ids"]
  starts = np.concatenate([[True], seg_t[1:] != seg_t[:-1]])
  decoder_inputs = np.where(starts, pad_id, np.concatenate([[pad_id], targets[:-1]]))
  out = {"inputs": row["inputs"], "inputs_mask": row["inputs_segment_ids"] > 0,
         "inputs_segment_ids": row["inputs_segment_ids"].astype(np.int32),
         "targets": targets, "decoder_inputs": decoder_inputs.astype(np.int32),
         "targets_segment_ids": seg_t.astype(np.int32),
         "target_weights": (seg_t > 0).astype(np.float32)}
  if "raw_source" in row:
    out["raw_source"] = row["raw_source"].astype(np.int32)
  return out


def corpus_rows(documents: grain.MapDataset, *, packing: str, raw_length: int,
                global_batch: int, seed: int, offset: int, num_bins: int, mixture: bool = False,
                **transform_kwargs: Any) -> grain.DatasetIterator:
  """This host's rows of each global batch of span-corrupted examples.

  `documents` is this host's endless stream of documents (`corpus.host_documents`:
  records with `tokens` and, for a mixture, each token's folder in `source`); the
  tokenizer's ids are shifted by `offset` into the model's vocabulary.  A mixture's rows
  carry `raw_source` (folder + 1 of each raw token the row was corrupted from, 0 on
  padding), from which the task logs each folder's share.
  """
  per_host = per_host_batch_size(global_batch)
  docs = documents.to_iter_dataset(DOCUMENT_READ_OPTIONS)
  if packing == "concat":
    fn = make_transform(**transform_kwargs)
    shifted = docs.map(lambda d: {**d, "tokens": np.asarray(d["tokens"], np.int32) + offset})
    features = {"tokens": raw_length, **({"source": raw_length} if mixture else {})}
    windows = grain.experimental.ConcatThenSplitIterDataset(shifted, length_struct=features)

    def corrupt(window: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
      out = fn(window, rng)
      if mixture:
        out["raw_source"] = np.asarray(window["source"], np.int32) + 1
      return out

    rows = windows.random_map(corrupt, seed=seed)
  elif packing == "first_fit":
    kw = {k: transform_kwargs[k] for k in ("noise_density", "mean_span", "eos_id")}
    sentinels = tuple(int(x) for x in transform_kwargs["sentinel_ids"])
    examples = grain.experimental.FlatMapIterDataset(docs, _Windows(raw_length)).random_map(
        lambda r, rng: _corrupt_piece(r, rng, sentinel_ids=sentinels, offset=offset, **kw),
        seed=seed)
    n_in, n_tgt = transform_kwargs["inputs_length"], transform_kwargs["targets_length"]
    # A window's raw tokens are fewer than its inputs and targets together (each
    # corrupted side adds sentinels and an EOS), so this budget never refuses an example.
    features = {"inputs": n_in, "targets": n_tgt,
                **({"raw_source": n_in + n_tgt} if mixture else {})}
    packed = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct=features, num_packing_bins=max(per_host, num_bins), seed=seed,
        shuffle_bins=False)
    pad_id = transform_kwargs["pad_id"]
    rows = packed.map(lambda r: packed_rows(r, pad_id))
  else:
    raise UserError(f"unknown data.packing {packing!r} for span corruption; use concat or "
                    "first_fit")
  return iter(rows.batch(per_host, drop_remainder=True))


def eval_batches(tokens: np.ndarray, *, raw_length: int, global_batch: int, seed: int,
                 **transform_kwargs: Any) -> Iterator[dict]:
  """Consecutive non-overlapping raw windows, each corrupted with rng (seed, window index).

  Every token of the split is in exactly one window: the last window is the
  shorter tail (its corrupted lengths are no longer: they are non-decreasing in
  the raw length), dropped only when it is a single token, which cannot be
  corrupted.  The last batch is padded with rows whose `inputs_mask` and
  `target_weights` are all 0.
  Yields this host's rows of each global batch.
  """
  per_host_batch_size(global_batch)  # a clear error when the processes cannot share it
  fn = make_transform(**transform_kwargs)
  starts = [s for s in range(0, len(tokens), raw_length) if len(tokens) - s >= 2]
  pad_id = transform_kwargs["pad_id"]
  for b in range(0, len(starts), global_batch):
    rows = [fn({"tokens": tokens[s:s + raw_length]}, np.random.default_rng((seed, b + j)))
            for j, s in enumerate(starts[b:b + global_batch])]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    if len(rows) < global_batch:  # static shapes: pad the batch with empty rows
      n = global_batch - len(rows)
      fill = {"inputs": pad_id, "targets": pad_id, "decoder_inputs": pad_id}
      batch = {k: np.concatenate([v, np.full((n, *v.shape[1:]), fill.get(k, 0), v.dtype)])
               for k, v in batch.items()}
    yield host_slice(batch)
