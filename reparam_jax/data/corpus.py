"""A config's corpus: its source, its tokenizer, its prepared shards, and packed batches.

`prepare_from_config` is `python -m reparam_jax.prepare_data` (`prepare_in_run`
the same, on the fly, into a run's workdir); `packed_train_loader` turns a
prepared folder into this host's rows of each global batch:

* documents are shuffled globally by the seed (one permutation per epoch) and
  host h of n reads documents h, h+n, ... of that order, so each process
  reads only its own share;
* a mixture (`data.mixture = "0.7:/shards/web,0.3:/shards/books"`: shares of
  the tokens) interleaves the folders' shuffled documents deterministically,
  each folder drawn in proportion to its weight over its mean document
  length, and the LM task logs each folder's realised share of the trained
  tokens (`train/mixture/<i>`, folders in the order written);
* `concat` (nanoGPT, GPT-2/3): documents with their boundary tokens are
  concatenated and cut into rows of `seq_len + 1` tokens; a row may span
  documents, the EOS between them tells the model;
* `first_fit` (T5X/seqio, MaxText): whole documents are packed first-fit
  into rows, with `segment_ids` (1, 2, ... per document, 0 on padding) and
  per-document `positions`; the model attends within a segment only and the
  loss skips padding and the first token of each segment (nothing before it
  to predict it from).  A document longer than a row goes in as consecutive
  row-sized pieces, each its own segment: nothing is dropped (seqio's
  `trim_and_pack` keeps only the first row's worth).

The iterator is grain's: its state (a few integers) goes into the checkpoint,
so a resumed run sees the batches an uninterrupted run would.  Packing runs on
each host's own documents, so the rows of a global batch depend on the number
of processes (as in MaxText); resuming needs the same number.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np

from reparam_jax.data import sources, token_shards
from reparam_jax.data.pipeline import DOCUMENT_READ_OPTIONS, per_host_batch_size, prepare_once
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
# that fits no bin closes all of them).  On bench.data_pipeline's corpus (rows
# of 1,024 tokens, 250 batches) 64 bins gave 98.29 % real tokens, 256 99.13 %,
# 1,024 99.43 %.
PACKING_BINS = 256


def open_config_source(data: ml_collections.ConfigDict) -> sources.Source:
  if not data.get("source"):
    raise UserError("no corpus: set --config.data.source (e.g. jsonl:/corpus/*.jsonl or "
                    "tfds:lm1b; reparam_jax/data/sources)")
  return sources.open_source(data.source, skip_malformed=data.get("skip_malformed", False),
                             raw_dir=data.get("raw_dir") or None,
                             tfds_dir=data.get("tfds_dir") or None)


def documents_in_memory(data: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """`{"train": documents of data.source, "validation": of data.eval_source}`, read whole.

  For the tasks that hold their (small) corpus in memory: masked-LM
  pre-training, the sentence-level seq2seq and VAE tasks.
  """
  if not data.get("eval_source"):
    raise UserError("config.data.eval_source is empty: name the held-out text to evaluate on "
                    "beside config.data.source")
  out = {}
  for split, spec in (("train", data.source), ("validation", data.eval_source)):
    held = ml_collections.ConfigDict({**data.to_dict(), "source": spec})
    out[split] = [doc for doc in open_config_source(held) if doc.strip()]
    if not out[split]:
      raise UserError(f"data source {spec!r} has no documents")
  return out


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


def prepare_in_run(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[str, str]:
  """`data.source` and `data.eval_source` tokenized into the run's own folders (on the fly).

  For corpora small enough to tokenize at the start of a run: the folders are
  `<workdir>/corpus/train` and `.../eval` (the held-out one with the training
  folder's tokenizer), written as `prepare_data` writes them, so a restarted run
  finds them done.  Process 0 tokenizes first; the others then find the shards
  there (or, on a disk of their own, write them too).
  """
  data = config.data
  if not workdir:
    raise UserError("data.source without data.prepared is tokenized into the run's workdir; "
                    "give --workdir, or prepare it with python -m reparam_jax.prepare_data")
  if not data.get("eval_source"):
    raise UserError("config.data.eval_source is empty: name the held-out text to evaluate on "
                    "(tokenized with data.source into the workdir), or set data.prepared and "
                    "data.eval_prepared to prepare_data folders")
  train_dir = os.path.join(workdir, "corpus", "train")
  eval_dir = os.path.join(workdir, "corpus", "eval")
  tokenizer_dir = os.path.join(train_dir, token_shards.TOKENIZER_DIR)

  def with_data(**fields: str) -> ml_collections.ConfigDict:
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.data.update(fields)
    return copy

  progress = jax.process_index() == 0

  def prepare_train() -> dict[str, Any]:
    # Once the folder has its tokenizer (process 0's, or a restarted run's), it is the one.
    fitted = os.path.isdir(tokenizer_dir)
    return prepare_from_config(with_data(tokenizer=tokenizer_dir) if fitted else config,
                               train_dir, progress=progress)

  prepare_once(prepare_train)
  prepare_once(prepare_from_config, with_data(source=data.eval_source, tokenizer=tokenizer_dir),
               eval_dir, progress=progress)
  return train_dir, eval_dir


def packed_train_loader(shards: Sequence[token_shards.TokenShards], weights: Sequence[float],
                        seq_len: int, global_batch: int, seed: int,
                        packing: str) -> grain.DatasetIterator:
  """This host's rows of each global batch: `tokens [b, seq_len + 1]` (+ `segment_ids`,
  `positions` for first_fit; + `source`, each token's folder index, for a mixture)."""
  per_host = per_host_batch_size(global_batch)
  packed = pack(shards, weights, seq_len + 1, per_host, seed, packing)
  fields = ["tokens"] if packing == "concat" else ["tokens", "segment_ids", "positions"]
  if len(shards) > 1:
    fields.append("source")
  return iter(packed.map(lambda r: {k: r[_GRAIN_NAMES[k]] for k in fields})
              .batch(per_host, drop_remainder=True))


_GRAIN_NAMES = {"tokens": "tokens", "segment_ids": "tokens_segment_ids",
                "positions": "tokens_positions", "source": "source"}


def parse_mixture(text: str) -> list[tuple[str, float]]:
  """`"0.7:/shards/web,0.3:/shards/books"` → [(folder, weight), ...], weights normalised."""
  entries = []
  for part in filter(None, (p.strip() for p in text.split(","))):
    weight, sep, folder = part.partition(":")
    try:
      w = float(weight)
    except ValueError:
      w = -1.0
    if not sep or not folder or w <= 0:
      raise UserError(f"data.mixture entry {part!r}: write WEIGHT:FOLDER with a positive "
                      "weight, e.g. 0.7:/shards/web,0.3:/shards/books")
    entries.append((os.path.expanduser(folder), w))
  if len(entries) < 2:
    raise UserError(f"data.mixture {text!r} names {len(entries)} folder(s); a mixture needs "
                    "two or more (one folder: data.prepared)")
  total = sum(w for _, w in entries)
  return [(f, w / total) for f, w in entries]


def pack(shards: Sequence[token_shards.TokenShards], weights: Sequence[float], row: int,
         per_host: int, seed: int, packing: str) -> grain.IterDataset:
  """This host's documents packed into rows of `row` tokens, with grain's segment fields.

  Each folder's documents are shuffled by (seed, folder) and repeated; a
  mixture interleaves them deterministically (grain's `MapDataset.mix`) so
  that each folder gives its weight's share of the tokens (`document_weights`),
  and tags every token with its folder (`source`).
  """
  if packing not in PACKINGS:
    raise UserError(f"unknown data.packing {packing!r}; use one of {', '.join(PACKINGS)}")
  docs = host_documents(shards, weights, seed)
  features = {"tokens": row, **({"source": row} if len(shards) > 1 else {})}
  if packing == "concat":
    return grain.experimental.ConcatThenSplitIterDataset(
        docs.to_iter_dataset(DOCUMENT_READ_OPTIONS), length_struct=features)
  pieces = grain.experimental.FlatMapIterDataset(docs.to_iter_dataset(DOCUMENT_READ_OPTIONS),
                                                 _RowPieces(row))
  return grain.experimental.FirstFitPackIterDataset(
      pieces, length_struct=features,
      num_packing_bins=max(per_host, PACKING_BINS), seed=seed, shuffle_bins=False)


def host_documents(shards: Sequence[token_shards.TokenShards], weights: Sequence[float],
                   seed: int) -> grain.MapDataset:
  """This host's endless stream of documents: each folder shuffled by (seed, folder) and
  repeated; a mixture interleaved by `document_weights` (grain's `MapDataset.mix`), each
  token tagged with its folder's index (`source`); host h of n takes documents h, h+n, ..."""
  n, h = jax.process_count(), jax.process_index()
  streams = [grain.MapDataset.source(s).shuffle(seed=seed + i).repeat()
             for i, s in enumerate(shards)]
  if len(streams) > 1:
    streams = [d.map(functools.partial(_tag, source=i)) for i, d in enumerate(streams)]
    docs = grain.MapDataset.mix(streams, document_weights(shards, weights))
  else:
    docs = streams[0]
  return docs[h::n]


def open_folders(folders: Sequence[tuple[str, float]]
                 ) -> list[tuple[token_shards.TokenShards, float]]:
  """[(TokenShards, weight)] of a run's training folders, which must share one tokenizer."""
  opened = [(token_shards.TokenShards(f), w) for f, w in folders]
  first = opened[0][0]
  for other, _ in opened[1:]:
    if other.manifest["tokenizer_sha256"] != first.manifest["tokenizer_sha256"]:
      raise UserError(f"data.mixture: {other.out_dir} was tokenized with another tokenizer "
                      f"than {first.out_dir}; prepare every folder with the same "
                      "data.tokenizer")
  return opened


class _RowPieces(grain.experimental.FlatMapTransform):
  """A document as consecutive pieces of at most `row` tokens: a document longer than a
  row is packed as several segments instead of being cut to its first row."""

  max_fan_out = 1 << 20  # not a bound grain's iterator enforces; documents may be long

  def __init__(self, row: int):
    self.row = row

  def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(element["tokens"])
    return [{k: v[i:i + self.row] for k, v in element.items()} for i in range(0, n, self.row)]


def document_weights(shards: Sequence[token_shards.TokenShards],
                     token_weights: Sequence[float]) -> list[float]:
  """Document-sampling weights under which each folder gives `token_weights` of the tokens.

  A mixture's weights are shares of the tokens trained on (as a data mixture is
  usually stated: "70 % web, 30 % books"); documents are drawn in proportion to
  weight / mean document length, so a folder of short documents is not
  drowned by one of long ones.
  """
  raw = [w * s.num_documents / max(s.num_tokens, 1) for s, w in zip(shards, token_weights)]
  return [r / sum(raw) for r in raw]


def _tag(doc: dict[str, np.ndarray], source: int) -> dict[str, np.ndarray]:
  return {**doc, "source": np.full(len(doc["tokens"]), source, np.int32)}


def run_folders(config: ml_collections.ConfigDict, workdir: str | None
                ) -> tuple[list[tuple[str, float]], str]:
  """([(folder, weight)] to train on, held-out folder) of a run reading token shards:
  data.prepared or data.mixture with data.eval_prepared, or data.source and
  data.eval_source tokenized into the workdir; ([], "") for the built-in datasets."""
  folders = training_folders(config.data)
  eval_folder = config.data.get("eval_prepared", "")
  if not folders and config.data.get("source"):  # a small corpus, tokenized on the fly
    train_dir, eval_folder = prepare_in_run(config, workdir)
    folders = [(train_dir, 1.0)]
  return folders, eval_folder


def held_out_shards(eval_folder: str, train: token_shards.TokenShards
                    ) -> token_shards.TokenShards:
  """The held-out folder, which must share the training folder's tokenizer."""
  held_out = token_shards.TokenShards(eval_folder)
  if held_out.manifest["tokenizer_sha256"] != train.manifest["tokenizer_sha256"]:
    raise UserError(f"{held_out.out_dir} was tokenized with another tokenizer than "
                    f"{train.out_dir}; prepare both with the same data.tokenizer")
  return held_out


def training_folders(data: ml_collections.ConfigDict) -> list[tuple[str, float]]:
  """[(folder, weight)] the LM task trains on: data.mixture's, or data.prepared alone."""
  if data.get("mixture") and data.get("prepared"):
    raise UserError("set data.prepared or data.mixture, not both")
  if data.get("mixture"):
    return parse_mixture(data.mixture)
  return [(os.path.expanduser(data.prepared), 1.0)] if data.get("prepared") else []
