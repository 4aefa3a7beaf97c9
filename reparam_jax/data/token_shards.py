"""Tokenize once: a source's documents as ArrayRecord shards of token ids, and reading them.

`prepare` (what `python -m reparam_jax.prepare_data` runs) writes into one folder:

    manifest.json                  source spec, tokenizer fingerprint, dtype, pieces
    tokenizer/                     the tokenizer, as load_tokenizer reads it
    shard-00000-of-00012.array_record    one record per document: its token ids
    shard-00000-of-00012.json      written last: that shard is complete (documents, tokens)

One shard per piece of the source (a file, or a range of records), so the
processes of a run split the work by piece (process i of n takes pieces i,
i+n, ...).  A shard and then its `.json` are each renamed into place when
whole, so a killed run leaves finished shards (kept) and temporary files
(ignored and redone): running the same command again finishes the job, and
running it on a finished folder does nothing.  A folder prepared from another
source or tokenizer is refused rather than mixed.

A record is the document's ids with the tokenizer's document boundaries (BOS
and EOS, `tokenizers.document_boundaries`), little-endian uint16 when the
vocabulary fits (nanoGPT's `.bin` choice: half the bytes of int32), else uint32.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from reparam_jax.data.sources import Source
from reparam_jax.data.tokenizers import Tokenizer, document_boundaries, load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.rundir.files import atomic_write

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = 1
# Documents per encode_batch call (HF tokenizers run it in Rust), and at most this much
# text: a batch's encodings are held at once, so a batch of long documents would set the
# peak memory, and the more batches a corpus has the longer its longest one.
_ENCODE_BATCH = 512
_ENCODE_BATCH_CHARS = 1 << 20
# A reader is kept open per shard, and each would hold a copy of the end of its file
# read ahead to parse the index (ArrayRecord's footer prefetch): memory that grows with
# the number of shards (about 5 MiB over 67 shards, bench.data_pipeline's 1 GiB corpus).
READER_OPTIONS = {"footer_prefetch_bytes": "0"}


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
  """sha256 over the files the tokenizer saves: equal files, equal ids."""
  with tempfile.TemporaryDirectory() as d:
    tokenizer.save(d)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(d)):
      digest.update(name.encode())
      with open(os.path.join(d, name), "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _encode_all(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  batch = getattr(tokenizer, "encode_batch", None)
  return batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]


def _batches(documents: Iterator[str], size: int, chars: int) -> Iterator[list[str]]:
  """Lists of up to `size` documents and about `chars` characters (a longer document
  alone)."""
  batch: list[str] = []
  held = 0
  for doc in documents:
    if batch and held + len(doc) > chars:
      yield batch
      batch, held = [], 0
    batch.append(doc)
    held += len(doc)
    if len(batch) == size:
      yield batch
      batch, held = [], 0
  if batch:
    yield batch


@functools.cache
def _glibc() -> Any:
  try:
    return ctypes.CDLL("libc.so.6")
  except OSError:  # not glibc: its allocator's settings do not apply
    return None


def _large_blocks_from_mmap(threshold: int = 4 << 20) -> None:
  """Blocks of `threshold` bytes or more come from mmap and go back to the OS when freed.

  glibc raises its mmap threshold each time it frees an mmapped block, after which
  large transient buffers (the encoding of a long document: 60 MiB for 800 K characters)
  come from the heap and fragment it, so the peak RSS crept up with the number of
  documents (bench.data_pipeline: 161 MiB over one 16 MiB file, 200 over four).  A fixed
  threshold keeps it flat; at 4 MiB it costs no measurable time.
  """
  libc = _glibc()
  if libc is not None:
    M_MMAP_THRESHOLD = -3  # noqa: N806 (glibc's malloc.h name)
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def _return_free_memory() -> None:
  """Free heap pages back to the OS (glibc's malloc_trim), before each batch: a long
  document's encodings then land on a heap without the holes earlier ones left."""
  libc = _glibc()
  if libc is not None:
    libc.malloc_trim(0)


def prepare(source: Source, tokenizer: Tokenizer, out_dir: str, *, process_index: int = 0,
            process_count: int = 1, progress: bool = True) -> dict[str, Any]:
  """Writes this process's missing shards of `source` into `out_dir`; returns a summary."""
  _large_blocks_from_mmap()
  if not 0 <= process_index < process_count:
    raise UserError(f"process index {process_index} is not in 0..{process_count - 1}")
  pieces = source.pieces()
  bos, eos = document_boundaries(tokenizer)
  dtype = np.dtype("<u2") if tokenizer.vocab_size <= 1 << 16 else np.dtype("<u4")
  manifest = {"format": FORMAT, "source": source.spec.text, "pieces": pieces,
              "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
              "vocab_size": int(tokenizer.vocab_size), "dtype": dtype.str, "bos": bos, "eos": eos}
  os.makedirs(out_dir, exist_ok=True)
  _claim(out_dir, manifest, tokenizer)
  n = len(pieces)
  mine = [i for i in range(process_index, n, process_count)]
  todo = [i for i in mine if not os.path.exists(_done_path(out_dir, i, n))]
  summary = {"shards": n, "mine": len(mine), "already_done": len(mine) - len(todo),
             "documents": 0, "tokens": 0, "skipped": 0, "seconds": 0.0}
  start = time.perf_counter()
  bar = _progress(len(todo), progress)
  for i in todo:
    docs, tokens = _write_shard(source, pieces[i], tokenizer, bos, eos, dtype,
                                os.path.join(out_dir, shard_name(i, n)))
    atomic_write(_done_path(out_dir, i, n), json.dumps(
        {"piece": pieces[i], "documents": docs, "tokens": tokens}) + "\n")
    summary["documents"] += docs
    summary["tokens"] += tokens
    elapsed = time.perf_counter() - start
    if bar is not None:
      bar.set_postfix_str(f"{summary['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s")
      bar.update(1)
  if bar is not None:
    bar.close()
  summary["skipped"] = source.skipped
  summary["seconds"] = time.perf_counter() - start
  return summary


def _progress(total: int, enabled: bool) -> Any:
  if not enabled or not total:
    return None
  from tqdm import tqdm
  return tqdm(total=total, unit="shard", desc="prepare_data", dynamic_ncols=True)


def _done_path(out_dir: str, index: int, count: int) -> str:
  return os.path.join(out_dir, shard_name(index, count) + ".json")


def _claim(out_dir: str, manifest: dict[str, Any], tokenizer: Tokenizer) -> None:
  """Writes the manifest and tokenizer, or checks that the folder's are these."""
  path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      found = json.load(f)
    for key in ("source", "tokenizer_sha256", "pieces"):
      if found.get(key) != manifest[key]:
        what = {"source": "source", "tokenizer_sha256": "tokenizer",
                "pieces": "list of files"}[key]
        raise UserError(f"{out_dir} holds shards of another {what} "
                        f"({found.get('source')!r}); give another --out or delete that folder")
    return
  tok_dir = os.path.join(out_dir, TOKENIZER_DIR)
  tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=out_dir)
  tokenizer.save(tmp)
  if os.path.isdir(tok_dir):  # another process of this run got there first
    shutil.rmtree(tmp)
  else:
    os.replace(tmp, tok_dir)
  atomic_write(path, json.dumps(manifest, indent=1) + "\n")


def _write_shard(source: Source, piece: str, tokenizer: Tokenizer, bos: list[int],
                 eos: list[int], dtype: np.dtype, path: str) -> tuple[int, int]:
  from array_record.python import array_record_module
  tmp = f"{path}.array_record.tmp-{os.getpid()}"
  # group_size:1 makes every record its own chunk: random access reads one document.
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  docs = tokens = 0
  head, tail = np.asarray(bos, dtype), np.asarray(eos, dtype)
  try:
    for texts in _batches(source.documents(piece), _ENCODE_BATCH, _ENCODE_BATCH_CHARS):
      _return_free_memory()
      for ids in _encode_all(tokenizer, texts):
        record = np.concatenate([head, ids.astype(dtype), tail])
        writer.write(record.tobytes())
        docs += 1
        tokens += len(record)
  finally:
    writer.close()
  os.replace(tmp, path + ".array_record")
  return docs, tokens


class TokenShards:
  """A prepared folder as a random-access source of documents: record i → {"tokens": ids}."""

  def __init__(self, out_dir: str):
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
      raise UserError(f"{out_dir} has no {MANIFEST}; prepare it with python -m "
                      "reparam_jax.prepare_data --config=... --out=" + out_dir)
    with open(path, encoding="utf-8") as f:
      self.manifest = json.load(f)
    n = len(self.manifest["pieces"])
    missing = [i for i in range(n) if not os.path.exists(_done_path(out_dir, i, n))]
    if missing:
      raise UserError(f"{out_dir}: {len(missing)} of {n} shards are not prepared (first: "
                      f"{shard_name(missing[0], n)}); run the same prepare_data command again "
                      "to finish them")
    self.out_dir = out_dir
    self.dtype = np.dtype(self.manifest["dtype"])
    self.paths = [os.path.join(out_dir, shard_name(i, n) + ".array_record") for i in range(n)]
    stats = []
    for i in range(n):
      with open(_done_path(out_dir, i, n), encoding="utf-8") as f:
        stats.append(json.load(f))
    self.shard_documents = [s["documents"] for s in stats]
    self.num_documents = sum(self.shard_documents)
    self.num_tokens = sum(s["tokens"] for s in stats)
    self._source = None

  def tokenizer(self) -> Tokenizer:
    return load_tokenizer(os.path.join(self.out_dir, TOKENIZER_DIR))

  def _records(self) -> Any:
    if self._source is None:  # opened lazily: grain may pickle this into worker processes
      import grain
      # `path[0:n]` with the count the shard's .json recorded: otherwise the data source
      # opens every shard up front just to count its records.
      self._source = grain.sources.ArrayRecordDataSource(
          [f"{p}[0:{n}]" for p, n in zip(self.paths, self.shard_documents)],
          reader_options=READER_OPTIONS)
    return self._source

  def __len__(self) -> int:
    return self.num_documents

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    ids = np.frombuffer(self._records()[i], self.dtype).astype(np.int32)
    return {"tokens": ids}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_source": None}
