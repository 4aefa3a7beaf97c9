"""SST-2 and other encoder inputs: sentences, the encoder tokenizer, batches.

The tokenizer is a sentencepiece model trained on the training sentences
with the encoder's special pieces `[CLS]`, `[SEP]`, `[MASK]`, or a
pretrained model's own (BERT's WordPiece, `data/hf_tokenizers.py`).  It is
saved into the run's workdir, and a run that starts from another workdir or
model (fine-tuning from pre-training or from a pretrained BERT, distillation
from a teacher) reuses that one's tokenizer so token ids mean the same thing
in both.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np

from reparam_jax.data import raw_files, tfds_builders
from reparam_jax.data.hf_tokenizers import HfTokenizer
from reparam_jax.data.pipeline import host_slice, prepare_once
from reparam_jax.data.text_pairs import Specials, pack
from reparam_jax.data.tokenizers import SentencePieceTokenizer, has_tokenizer, load_tokenizer
from reparam_jax.errors import UserError

SPECIAL_PIECES = ("[CLS]", "[SEP]", "[MASK]")
LABEL_NAMES = ("negative", "positive")


def load_sst2(data: ml_collections.ConfigDict) -> dict[str, tuple[list[str], np.ndarray]]:
  """`{split: (sentences, labels)}` for `train` and `validation` (the GLUE dev set)."""
  if data.name != "sst2":
    raise UserError(f"this task reads data.name='sst2', got {data.name!r}")
  builder = prepare_once(tfds_builders.load_builder, "sst2",
                         raw_dir=raw_files.raw_dir_from(data.raw_dir),
                         tfds_dir=data.tfds_dir or None,
                         skip_malformed=data.get("skip_malformed", False))
  source = builder.as_data_source()
  out = {}
  for split in ("train", "validation"):
    rows = tfds_builders.read_all(source[split], ("idx", "sentence", "label"))
    order = np.argsort(rows["idx"], kind="stable")  # the TSV's order, whatever the shard layout
    sentences = [_text(rows["sentence"][i]) for i in order]
    out[split] = (sentences, np.asarray(rows["label"], np.int32)[order])
  return out


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


EncoderTokenizer = SentencePieceTokenizer | HfTokenizer


def encoder_tokenizer(data: ml_collections.ConfigDict, train_lines: Sequence[str],
                      workdir: str | None, inherit_from: Sequence[str] = ()
                      ) -> EncoderTokenizer:
  """The workdir's tokenizer; else the first of `inherit_from`'s (saved into the workdir);
  else a new sentencepiece model fitted on `train_lines`."""
  if workdir and has_tokenizer(workdir):
    return _checked(load_tokenizer(workdir), workdir)
  for other in inherit_from:
    if has_tokenizer(other):
      tok = _checked(load_tokenizer(other), other)
      if workdir:
        tok.save(workdir)
      return tok
  if data.tokenizer != "sentencepiece":
    raise UserError(f"encoder tasks need data.tokenizer='sentencepiece', got {data.tokenizer!r}")
  tok = SentencePieceTokenizer.fit(train_lines, data.vocab_size, user_symbols=SPECIAL_PIECES)
  if workdir:
    tok.save(workdir)
  return tok


def _checked(tok, where: str) -> EncoderTokenizer:
  if isinstance(tok, HfTokenizer):
    ok = None not in (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id)
  else:
    ok = isinstance(tok, SentencePieceTokenizer) and tok.piece_id("[MASK]") not in (0, 1)
  if not ok:
    raise UserError(f"the tokenizer in {where} has no [CLS]/[SEP]/[MASK]/[PAD] tokens; encoder "
                    "tasks need a BERT-style vocabulary (an encoder run's or a BERT model's)")
  return tok


def specials(tok: EncoderTokenizer) -> Specials:
  if isinstance(tok, HfTokenizer):
    special_ids = tuple(sorted(tok.backend.token_to_id(t) for t in tok.special_tokens))
    return Specials(pad=tok.pad_id, cls=tok.cls_id, sep=tok.sep_id, mask=tok.mask_id,
                    never_mask=special_ids, vocab_size=tok.vocab_size)
  ids = {p: tok.piece_id(p) for p in SPECIAL_PIECES}
  # sentencepiece's control ids: 0 pad, 1 unk, 2 bos, 3 eos (see tokenizers.py).
  return Specials(pad=0, cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"],
                  never_mask=(0, 1, 2, 3, *ids.values()), vocab_size=tok.vocab_size)


def encode_all(tok: EncoderTokenizer, lines: Sequence[str]) -> list[np.ndarray]:
  if isinstance(tok, HfTokenizer):
    return tok.encode_batch(lines)  # the Rust tokenizer's threads
  return [tok.encode(line) for line in lines]


class ClassificationSource:
  """Record `i`: `[CLS] a [SEP]` (or `[CLS] a [SEP] b [SEP]` with `pairs`) padded, its padding
  mask, its token types (pairs only) and label (shape [1])."""

  def __init__(self, tokens: list[np.ndarray], labels: np.ndarray, seq_len: int, sp: Specials,
               pairs: list[np.ndarray] | None = None):
    self._tokens, self._labels, self._seq_len, self._sp = tokens, labels, seq_len, sp
    self._pairs = pairs

  def __len__(self) -> int:
    return len(self._tokens)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.record(i, self._seq_len)

  def record(self, i: int, seq_len: int) -> dict[str, np.ndarray]:
    rec = pack(self._tokens[i], None if self._pairs is None else self._pairs[i], seq_len, self._sp)
    out = {"ids": rec["ids"], "padding_mask": rec["padding_mask"],
           "label": np.asarray([self._labels[i]], np.int32)}
    if self._pairs is not None:
      out["token_types"] = rec["token_types"]
    return out

  def lengths(self) -> np.ndarray:
    """Packed length of each record (with [CLS] and the [SEP]s), capped at seq_len."""
    if self._pairs is None:
      return np.minimum([len(t) + 2 for t in self._tokens], self._seq_len)
    return np.minimum([len(a) + len(b) + 3 for a, b in zip(self._tokens, self._pairs)],
                      self._seq_len)

  def batch(self, indices: np.ndarray, seq_len: int, rng: np.random.Generator) -> dict:
    del rng  # nothing random in a classification record
    rows = [self.record(int(i), seq_len) for i in indices]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def padded_eval_batches(record: Callable[[int], dict[str, np.ndarray]], n: int,
                        global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Every record once, in order; the last batch is padded with `weights` 0.

  Yields this host's rows of each global batch.  Per-example values (labels,
  `weights`) have shape [B, 1]: the trainer shards every batch leaf with one
  (batch, length) sharding, which needs rank ≥ 2.
  """
  template = record(0)
  for start in range(0, n, global_batch):
    idx = range(start, min(start + global_batch, n))
    rows = [record(i) for i in idx]
    weights = np.zeros((global_batch, 1), np.float32)
    weights[:len(rows)] = 1.0
    # Padding rows repeat a real record (weight 0): an all-padding row would
    # attend to nothing and put NaNs into the sums, even multiplied by 0.
    rows += [template] * (global_batch - len(rows))
    batch = {k: np.stack([r[k] for r in rows]) for k in template}
    batch["weights"] = weights
    yield host_slice(batch)
