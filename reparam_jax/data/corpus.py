"""A config's corpus: its source, its tokenizer, its prepared shards, and packed batches.

`prepare_from_config` is `python -m reparam_jax.prepare_data`; `packed_train_loader`
turns a prepared folder into this host's rows of each global batch:

* documents are shuffled globally by the seed (one permutation per epoch) and
  host h of n reads documents h, h+n, ... of that order, so each process
  reads only its own share;
* `concat` (nanoGPT, GPT-2/3): documents with their boundary tokens are
  concatenated and cut into rows of `seq_len + 1` tokens; a row may span
  documents, the EOS between them tells the model;
* `first_fit` (T5X/seqio, MaxText): whole documents (cut at `seq_len + 1`)
  are packed first-fit into rows, with `segment_ids` (1, 2, ... per
  document, 0 on padding) and per-document `positions`; the model attends
  within a segment only and the loss skips padding and the first token of
  each document (nothing before it to predict it from).

The iterator is grain's: its state (a few integers) goes into the checkpoint,
so a resumed run sees the batches an uninterrupted run would.  Packing runs on
each host's own documents, so the rows of a global batch depend on the number
of processes (as in MaxText); resuming needs the same number.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections

from reparam_jax.data import sources, token_shards
from reparam_jax.data.pipeline import per_host_batch_size
from reparam_jax.data.tokenizers import (
  CharTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  has_tokenizer,
  load_tokenizer,
  open_tokenizer,
)
from reparam_jax.errors import UserError

FIT_BYTES = 10 << 20  # text a fitted tokenizer learns from
PACKINGS = ("concat", "first_fit")
# Rows filled at once by first_fit: more bins leave less padding (a document
# that fits no bin closes all of them).
PACKING_BINS = 64


def open_config_source(data: ml_collections.ConfigDict) -> sources.Source:
  if not data.get("source"):
    raise UserError("no corpus: set --config.data.source (e.g. jsonl:/corpus/*.jsonl or "
                    "tfds:lm1b; reparam_jax/data/sources)")
  return sources.open_source(data.source, skip_malformed=data.get("skip_malformed", False),
                             raw_dir=data.get("raw_dir") or None,
                             tfds_dir=data.get("tfds_dir") or None)


def tokenizer_for(config: ml_collections.ConfigDict, source: sources.Source) -> Tokenizer:
  """config.data.tokenizer as a path, else init_from's, else char/sentencepiece fitted on a sample."""
  name = config.data.tokenizer
  if name not in ("char", "sentencepiece"):
    return open_tokenizer(name)
  init_from = config.get("init_from", "")
  if has_tokenizer(init_from):
    return load_tokenizer(init_from)
  sample, size = [], 0
  for doc in source:
    sample.append(doc)
    size += len(doc)
    if size >= FIT_BYTES:
      break
  if not sample:
    raise UserError(f"data source {source.spec.text!r} has no documents")
  if name == "char":
    return CharTokenizer.fit(sample)
  lines = [line for doc in sample for line in doc.splitlines()]
  return SentencePieceTokenizer.fit(lines, config.data.vocab_size)


def prepare_from_config(config: ml_collections.ConfigDict, out: str = "", *,
                        process_index: int = 0, process_count: int = 1,
                        progress: bool = True) -> dict[str, Any]:
  out = out or config.data.get("prepared", "")
  if not out:
    raise UserError("no output folder: give --out=DIR or set --config.data.prepared")
  source = open_config_source(config.data)
  tokenizer = tokenizer_for(config, source)
  summary = token_shards.prepare(source, tokenizer, out, process_index=process_index,
                                 process_count=process_count, progress=progress)
  return {**summary, "out": out}


def packed_train_loader(shards: token_shards.TokenShards, seq_len: int, global_batch: int,
                        seed: int, packing: str) -> grain.DatasetIterator:
  """This host's rows of each global batch: `tokens [b, seq_len + 1]` (+ segment_ids,
  positions for first_fit)."""
  per_host = per_host_batch_size(global_batch)
  packed = pack(shards, seq_len + 1, per_host, seed, packing)
  fields = (("tokens",) if packing == "concat" else ("tokens", "segment_ids", "positions"))
  return iter(packed.map(lambda r: {k: r[_GRAIN_NAMES[k]] for k in fields})
              .batch(per_host, drop_remainder=True))


_GRAIN_NAMES = {"tokens": "tokens", "segment_ids": "tokens_segment_ids",
                "positions": "tokens_positions"}


def pack(shards: token_shards.TokenShards, row: int, per_host: int, seed: int,
         packing: str) -> grain.IterDataset:
  """This host's documents packed into rows of `row` tokens, with grain's segment fields."""
  if packing not in PACKINGS:
    raise UserError(f"unknown data.packing {packing!r}; use one of {', '.join(PACKINGS)}")
  n, h = jax.process_count(), jax.process_index()
  docs = grain.MapDataset.source(shards).shuffle(seed=seed).repeat()[h::n]
  if packing == "concat":
    return grain.experimental.ConcatThenSplitIterDataset(docs.to_iter_dataset(),
                                                         length_struct={"tokens": row})
  docs = docs.map(lambda d: {"tokens": d["tokens"][:row]})
  return grain.experimental.FirstFitPackIterDataset(
      docs.to_iter_dataset(), length_struct={"tokens": row},
      num_packing_bins=max(per_host, PACKING_BINS), seed=seed, shuffle_bins=False)


def prepared_folder(data: ml_collections.ConfigDict) -> str:
  path = data.get("prepared", "")
  return os.path.expanduser(path) if path else ""
