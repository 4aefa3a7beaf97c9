"""One sentence per example: Tiny Shakespeare lines or SST-2 sentences, padded to seq_len.

Record layout (`tokens`, int32 [seq_len + 1]):

  BOS t_1 … t_n EOS PAD … PAD

with the tokenizer's ids shifted by `OFFSET` so that PAD = 0, BOS = 1 and
EOS = 2 never collide with a character.  A decoder reads `tokens[:-1]` and
predicts `tokens[1:]`; an encoder reads `tokens[1:]` (the text and EOS).
A line longer than seq_len − 1 tokens is cut (and then has no EOS).

Tiny Shakespeare uses the LM builder's 90/10 character split, cut into its
non-empty lines (29,242 train / 3,536 validation, at most 63 characters);
SST-2 uses the GLUE train/dev sentences; any text source (`data.source`,
held out `data.eval_source`) the non-empty lines of its documents.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np

from reparam_jax.data import corpus, raw_files, tfds_builders
from reparam_jax.data.pipeline import host_slice, per_host_batch_size, prepare_once
from reparam_jax.errors import UserError

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3


def load_lines(data: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """The sentences of each split ('train', 'validation')."""
  if data.get("source"):  # any text source: the non-empty lines of its documents
    return {split: [line for doc in docs for line in doc.splitlines() if line.strip()]
            for split, docs in corpus.documents_in_memory(data).items()}
  raw_dir = raw_files.raw_dir_from(data.raw_dir)
  if data.name not in ("tiny_shakespeare", "sst2"):
    raise UserError(f"line-level data reads tiny_shakespeare or sst2, got data.name={data.name!r}; "
                    "or set data.source and data.eval_source (reparam_jax/data/sources)")
  builder = prepare_once(tfds_builders.load_builder, data.name, raw_dir=raw_dir,
                         tfds_dir=data.tfds_dir or None)
  source = builder.as_data_source()
  out = {}
  for split in ("train", "validation"):
    if data.name == "tiny_shakespeare":
      text = _str(source[split][0]["text"])
      out[split] = [line for line in text.split("\n") if line.strip()]
    else:
      sentences = tfds_builders.read_all(source[split], ("sentence",))["sentence"]
      out[split] = [_str(s) for s in sentences]
  return out


def _str(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def encode_line(ids: np.ndarray, seq_len: int) -> np.ndarray:
  """Tokenizer ids of one line → the padded record [seq_len + 1]."""
  body = np.asarray(ids, np.int32)[:seq_len - 1] + OFFSET
  row = np.full(seq_len + 1, PAD, np.int32)
  row[0] = BOS
  row[1:1 + len(body)] = body
  if len(ids) <= seq_len - 1:
    row[1 + len(body)] = EOS
  return row


def encode_lines(tokenizer, lines: Sequence[str], seq_len: int) -> np.ndarray:
  """[N, seq_len + 1] records of every line."""
  if seq_len < 2:
    raise UserError(f"seq_len={seq_len} leaves no room for a token between BOS and EOS")
  return np.stack([encode_line(tokenizer.encode(line), seq_len) for line in lines])


def decode_ids(tokenizer, ids: Sequence[int]) -> str:
  """Text of generated ids (shifted); stops at EOS, skips PAD and BOS."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS:
      break
    if i >= OFFSET:
      out.append(i - OFFSET)
  return tokenizer.decode(out)


class LineSource:
  """Random access to the records of one split (a grain data source)."""

  def __init__(self, records_NxL: np.ndarray):
    self._records = records_NxL

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"tokens": self._records[i]}


def train_loader_with_step(source: LineSource, global_batch: int,
                           seed: int) -> grain.DatasetIterator:
  """`pipeline.train_loader`'s batches, each row also carrying its batch index as `step`.

  Global batch t is consumed by optimizer step t (the iterator is
  checkpointed with the state, so this holds across resumes too), which lets
  a loss anneal a weight by step without the trainer passing it in.  (Shape
  [B, 1]: the trainer shards every batch leaf as (batch, length).)
  """
  n, h = jax.process_count(), jax.process_index()
  per_host = per_host_batch_size(global_batch)
  dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  dataset = dataset.batch(per_host, drop_remainder=True)[h::n]
  dataset = dataset.map_with_index(
      lambda t, batch: dict(batch, step=np.full((per_host, 1), t, np.int32)))
  return iter(dataset.to_iter_dataset())


def eval_batches(records_NxL: np.ndarray, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Every record once, in order; the last batch padded with rows of weight 0.

  `row_weights` is [B, 1] (the trainer shards every batch leaf as (batch, length)).
  """
  n = len(records_NxL)
  for start in range(0, n, global_batch):
    rows = records_NxL[start:start + global_batch]
    weights = np.ones((len(rows), 1), np.float32)
    if len(rows) < global_batch:
      pad = global_batch - len(rows)
      empty = np.zeros((pad, records_NxL.shape[1]), np.int32)
      empty[:, 0], empty[:, 1] = BOS, EOS
      rows = np.concatenate([rows, empty])
      weights = np.concatenate([weights, np.zeros((pad, 1), np.float32)])
    yield host_slice({"tokens": rows, "row_weights": weights})
