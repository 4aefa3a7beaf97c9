"""Tokenizers: character level, and sentencepiece trained locally on a corpus.

Both save themselves into the run's workdir (`tokenizer.json` or
`tokenizer.model`), so `sample` and later fine-tuning decode with exactly the
vocabulary the model was trained on.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm

from reparam_jax.data import hf_tokenizers
from reparam_jax.errors import UserError
from reparam_jax.rundir.files import atomic_write


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Iterable[int]) -> str: ...

  def save(self, directory: str) -> None: ...


class CharTokenizer:
  """One id per character, ids in sorted character order (nanoGPT's scheme)."""

  FILENAME = "tokenizer.json"

  def __init__(self, chars: str):
    self.chars = chars
    self._index = {c: i for i, c in enumerate(chars)}
    self.vocab_size = len(chars)

  @classmethod
  def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
    return cls("".join(sorted(set().union(*map(set, texts)))))

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
    except KeyError as e:
      raise UserError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

  def decode(self, ids: Iterable[int]) -> str:
    return "".join(self.chars[int(i)] for i in ids)

  def save(self, directory: str) -> None:
    atomic_write(os.path.join(directory, self.FILENAME),
                  json.dumps({"type": "char", "chars": self.chars}).encode("utf-8"))


class SentencePieceTokenizer:
  """A sentencepiece unigram model trained in memory on the training text."""

  FILENAME = "tokenizer.model"

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()

  @classmethod
  def fit(cls, lines: Iterable[str], vocab_size: int, model_type: str = "unigram",
          user_symbols: tuple[str, ...] = ()) -> "SentencePieceTokenizer":
    if vocab_size <= 0:
      raise UserError("sentencepiece needs --config.data.vocab_size > 0")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for s in lines if s.strip()]), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=list(user_symbols),
        num_threads=2, minloglevel=2, hard_vocab_limit=False)
    return cls(model.getvalue())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def piece_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def save(self, directory: str) -> None:
    atomic_write(os.path.join(directory, self.FILENAME), self.model_proto)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt", "vocab.json")


def has_tokenizer(directory: str) -> bool:
  """Whether `directory` holds a tokenizer `load_tokenizer` can read (a run's or a model's)."""
  return bool(directory) and any(os.path.exists(os.path.join(directory, f))
                                 for f in TOKENIZER_FILES)


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer a run saved into its workdir, or a Hugging Face folder's.

  `tokenizer.json` is the char tokenizer's file and the `tokenizers`
  library's (a pretrained model's, saved by `hf_tokenizers`); the contents
  tell them apart.
  """
  char_path = os.path.join(directory, CharTokenizer.FILENAME)
  sp_path = os.path.join(directory, SentencePieceTokenizer.FILENAME)
  if os.path.exists(char_path):
    with open(char_path, encoding="utf-8") as f:
      saved = json.load(f)
    if "chars" in saved:
      return CharTokenizer(saved["chars"])
  if os.path.exists(sp_path) and not _pretrained_folder(directory):
    with open(sp_path, "rb") as f:
      return SentencePieceTokenizer(f.read())
  tokenizer = hf_tokenizers.load(directory)
  if tokenizer is not None:
    return tokenizer
  raise UserError(f"no tokenizer in {directory} (expected {CharTokenizer.FILENAME}, "
                  f"{SentencePieceTokenizer.FILENAME}, or a Hugging Face vocab.json + merges.txt "
                  "or vocab.txt); is it a training workdir?")


def _pretrained_folder(directory: str) -> bool:
  """Whether `directory` is a pretrained model's folder (Llama 2, T5: read as transformers
  reads it) rather than a training run's, whose fitted SentencePiece model is its own:
  a tokenizer_config.json, or a config.json of transformers' (a run's config.json holds
  the run's config, which has no model_type)."""
  if os.path.exists(os.path.join(directory, hf_tokenizers.CONFIG_FILENAME)):
    return True
  try:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
      found = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(found, dict) and "model_type" in found


def open_tokenizer(spec: str) -> Tokenizer:
  """A tokenizer named by a path: a Hugging Face / run folder, its `tokenizer.json`, or a
  SentencePiece `.model` file (T5's, Llama 2's)."""
  path = os.path.expanduser(spec)
  if os.path.isdir(path):
    return load_tokenizer(path)
  if os.path.isfile(path) and path.endswith(".model"):
    return hf_tokenizers.from_sentencepiece(path)
  if os.path.isfile(path) and os.path.basename(path) == hf_tokenizers.FILENAME:
    return load_tokenizer(os.path.dirname(path) or ".")
  raise UserError(f"tokenizer {spec!r}: not a tokenizer folder, tokenizer.json or "
                  "SentencePiece .model file; give one of those, 'char' or 'sentencepiece'")


def document_boundaries(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
  """(ids before, ids after) every document when documents are concatenated for training.

  What each tokenizer's own convention puts there: GPT-2 ends a document with
  `<|endoftext|>`; Llama 2 (SentencePiece) and Llama 3 (`tokenizer.json`)
  start one with BOS and end it with EOS; T5 ends one with `</s>`; BERT's
  WordPiece separates with `[SEP]`.  The char tokenizer has no special ids.
  """
  if isinstance(tokenizer, SentencePieceTokenizer):
    sp = tokenizer._sp  # pylint: disable=protected-access
    return ([sp.bos_id()] if sp.bos_id() >= 0 else []), ([sp.eos_id()] if sp.eos_id() >= 0 else [])
  if isinstance(tokenizer, hf_tokenizers.HfTokenizer):
    return tokenizer.document_boundaries()
  return [], []
