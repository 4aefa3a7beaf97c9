"""Token streams for language modelling: training windows and evaluation chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from reparam_jax.data import hf_tokenizers, raw_files, tfds_builders
from reparam_jax.data.pipeline import host_slice, prepare_once
from reparam_jax.data.tokenizers import (
  CharTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  has_tokenizer,
  load_tokenizer,
)
from reparam_jax.errors import UserError


class WindowSource:
  """Record `i` is the `length + 1` tokens starting at offset `i`.

  Sampling every offset (shuffled) is nanoGPT's random-crop scheme made
  deterministic and resumable: the sampler's position is the whole state.
  """

  def __init__(self, tokens: np.ndarray, length: int):
    if len(tokens) <= length + 1:
      raise UserError(f"text of {len(tokens)} tokens is too short for seq_len {length}")
    self._tokens = tokens
    self._length = length

  def __len__(self) -> int:
    return len(self._tokens) - self._length

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"tokens": self._tokens[i:i + self._length + 1]}


def eval_chunks(tokens: np.ndarray, length: int, global_batch: int) -> Iterator[dict]:
  """Every target of the split exactly once, in consecutive windows.

  The last window and the last batch are padded; `weights` is 0 on padding,
  so the mean over weights is the exact per-token loss of the split.
  Yields this host's rows of each global batch.
  """
  num_targets = len(tokens) - 1
  num_windows = -(-num_targets // length)
  padded = np.zeros(num_windows * length + 1, np.int32)
  padded[:len(tokens)] = tokens
  weights = np.zeros(num_windows * length, np.float32)
  weights[:num_targets] = 1.0
  starts = np.arange(num_windows) * length
  for b in range(0, num_windows, global_batch):
    idx = starts[b:b + global_batch]
    rows = np.stack([padded[s:s + length + 1] for s in idx])
    w = np.stack([weights[s:s + length] for s in idx])
    if len(idx) < global_batch:  # static shapes: pad the batch with empty rows
      pad = global_batch - len(idx)
      rows = np.concatenate([rows, np.zeros((pad, length + 1), np.int32)])
      w = np.concatenate([w, np.zeros((pad, length), np.float32)])
    yield host_slice({"tokens": rows, "weights": w})


def concatenated_rows(documents: Any, length: int, num_rows: int) -> np.ndarray:
  """The first `num_rows` rows of `length + 1` tokens of the documents concatenated in order.

  Rows overlap by one token so that every token after the first is a target
  once; fewer rows when the documents run out, none is padded.
  """
  stream = concatenated_tokens(documents, num_rows * length + 1)
  rows = max(0, min(num_rows, (len(stream) - 1) // length))
  if not rows:
    raise UserError(f"the held-out documents hold {len(stream)} tokens, fewer than one row "
                    f"of seq_len {length} + 1")
  return np.stack([stream[r * length:r * length + length + 1] for r in range(rows)])


def concatenated_tokens(documents: Any, need: int) -> np.ndarray:
  """The documents' tokens concatenated in order, from as many documents as give `need`
  tokens (all of them when they hold fewer); the whole of the last document read."""
  parts, have = [], 0
  for i in range(len(documents)):
    if have >= need:
      break
    ids = documents[i]["tokens"]
    parts.append(ids)
    have += len(ids)
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def decode_text(tokenizer: Tokenizer, ids: np.ndarray) -> str:
  """`ids` as text without special tokens (BOS/EOS/[SEP] are not text)."""
  if isinstance(tokenizer, hf_tokenizers.HfTokenizer):
    return tokenizer.decode(ids, skip_special_tokens=True)
  return tokenizer.decode(ids)  # char: no special ids; SentencePiece decodes BOS/EOS to ""


def load_splits(data: ml_collections.ConfigDict) -> dict[str, str]:
  """The raw text of each split of a text dataset."""
  if data.name != "tiny_shakespeare":
    raise UserError(f"the language-modelling task reads tiny_shakespeare or a prepared corpus, "
                    f"got data.name={data.name!r}; for other text set --config.data.source, "
                    "run python -m reparam_jax.prepare_data and set --config.data.prepared")
  raw_dir = raw_files.raw_dir_from(data.raw_dir)
  builder = prepare_once(tfds_builders.load_builder, data.name, raw_dir=raw_dir,
                         tfds_dir=data.tfds_dir or None)
  source = builder.as_data_source()
  texts = {split: _text(source[split][0]["text"]) for split in ("train", "validation")}
  return with_text_holdout(texts, data)


def holdout_unread(data: ml_collections.ConfigDict) -> str | None:
  """Why this text data would not evaluate a held-out split (None: `load_splits` carves it)."""
  other = [k for k in ("prepared", "mixture", "response_field") if data.get(k)]
  if other:
    return f"data.{other[0]} carves no held-out split"
  return None  # load_splits: tiny_shakespeare, through with_text_holdout


def with_text_holdout(splits: dict[str, str], data: ml_collections.ConfigDict) -> dict[str, str]:
  """`splits` with the last `data.holdout_examples` characters of the training text held out;
  with `data.evaluate_on="holdout"` they are the text evaluated instead of `validation`.

  Contiguous text, not a permutation of characters: a held-out window must share no
  characters with a training window.  The end of the text is fixed, so the split is
  the same for every seed and row (sweeps/tuning.py).
  """
  # classification.py holds the one definition of the two settings and their checks.
  from reparam_jax.data.classification import holdout_settings
  evaluate_on, n = holdout_settings(data)
  if n == 0:
    return splits
  train = splits["train"]
  if n >= len(train):
    raise UserError(f"data.holdout_examples={n} characters leaves no training text (the "
                    f"training split has {len(train)}); hold out fewer")
  out = dict(splits, train=train[:-n])
  if evaluate_on == "holdout":
    out["validation"] = train[-n:]
  return out


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def make_tokenizer(data: ml_collections.ConfigDict, splits: dict[str, str],
                   workdir: str | None, inherit_from: str = "") -> Tokenizer:
  """The run's tokenizer: reloaded from the workdir if it exists; else `inherit_from`'s
  (a pretrained model's, saved into the workdir); else fitted."""
  if workdir and has_tokenizer(workdir):
    return load_tokenizer(workdir)
  if has_tokenizer(inherit_from):
    tok = load_tokenizer(inherit_from)
    if workdir:
      tok.save(workdir)
    return tok
  if data.tokenizer == "char":
    tok = CharTokenizer.fit(splits.values())
  elif data.tokenizer == "sentencepiece":
    tok = SentencePieceTokenizer.fit(splits["train"].splitlines(), data.vocab_size)
  else:
    raise UserError(f"unknown data.tokenizer {data.tokenizer!r}; use 'char' or 'sentencepiece'")
  if workdir:
    tok.save(workdir)
  return tok
