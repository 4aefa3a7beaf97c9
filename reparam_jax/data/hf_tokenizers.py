"""The tokenizers of pretrained models (GPT-2 byte-level BPE, BERT WordPiece, ...).

They run on Hugging Face's `tokenizers` library (a small Rust wheel, what
`transformers` itself uses), wrapped in the project's tokenizer interface
(`encode`, `decode`, `vocab_size`, `save`; see `data/tokenizers.py`).

A model folder is read the way `transformers` reads it: its `tokenizer.json`
if it has one, else the slow tokenizer's files (a SentencePiece `tokenizer.model`
or `spiece.model` for Llama 2 and T5, rebuilt as a `tokenizers` pipeline by
data/sentencepiece_json.py; `vocab.json` + `merges.txt` for GPT-2; `vocab.txt`
for BERT) with the options of `tokenizer_config.json`.
`encode` adds no special tokens (`build_inputs` adds BERT's [CLS]/[SEP]) and
never pads or truncates, whatever the folder's `tokenizer.json` says; special
tokens written literally in the text (`<|endoftext|>`, `[MASK]`) stay whole.
`save` writes `tokenizer.json`, `tokenizer_config.json` and the vocabulary
files, a folder both this project and `transformers` load.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from reparam_jax.data import sentencepiece_json
from reparam_jax.errors import UserError

FILENAME = "tokenizer.json"
CONFIG_FILENAME = "tokenizer_config.json"
_BERT_SPECIALS = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]",
                  "mask": "[MASK]"}


class HfTokenizer:
  """A `tokenizers.Tokenizer` plus the `tokenizer_config.json` options that go with it."""

  def __init__(self, backend: tokenizers.Tokenizer, config: dict[str, Any] | None = None):
    backend.no_padding()  # a model folder's tokenizer.json may pad/truncate to 128 or 512
    backend.no_truncation()
    self.backend = backend
    self.config = dict(config or {})
    self.kind = type(backend.model).__name__  # "BPE", "WordPiece", "Unigram", ...
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    self.special_tokens = tuple(t.content for t in backend.get_added_tokens_decoder().values()
                                if t.special)
    specials = _BERT_SPECIALS if self.kind == "WordPiece" else {}
    names = {k: _token_name(self.config.get(f"{k}_token")) or default
             for k, default in specials.items()}
    if self.kind == "WordPiece":
      names["unk"] = backend.model.unk_token
    self.unk_id, self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
        backend.token_to_id(names[k]) if names.get(k) else None
        for k in ("unk", "cls", "sep", "pad", "mask"))
    self.cuts_at_whitespace = _cuts_at_whitespace(backend)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """`encode` of each text, in parallel threads (the fast path for a whole dataset);
    `encode_batch_fast` skips the character offsets, which ids alone do not need.

    A text longer than `LONG_TEXT_CHARS` is encoded in pieces cut where the tokenizer
    itself cuts (`whitespace_cuts`), which gives the same ids: encoding one text holds several
    working copies of it (normalized string, byte alignments, pre-token splits), 60 MiB
    for 800 K characters, so the longest document would otherwise set the peak memory of
    tokenizing a whole corpus.
    """
    pieces: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
      for piece in self._pieces(text):
        pieces.append(piece)
        owners.append(i)
    ids: list[list[np.ndarray]] = [[] for _ in texts]
    for owner, e in zip(owners, self.backend.encode_batch_fast(pieces, add_special_tokens=False)):
      ids[owner].append(np.asarray(e.ids, np.int32))
    return [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in ids]

  def _pieces(self, text: str) -> Iterable[str]:
    if len(text) <= LONG_TEXT_CHARS or not self.cuts_at_whitespace:
      return (text,)
    return whitespace_cuts(text, LONG_TEXT_CHARS)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])` and its token types (0 for a, 1 for b)."""
    if self.cls_id is None or self.sep_id is None:
      raise UserError(f"the {self.kind} vocabulary has no [CLS]/[SEP] tokens; build_inputs "
                      "is for BERT-style tokenizers")
    ids = [self.cls_id, *ids_a, self.sep_id]
    types = [0] * len(ids)
    if ids_b is not None:
      ids += [*ids_b, self.sep_id]
      types += [1] * (len(ids_b) + 1)
    return np.asarray(ids, np.int32), np.asarray(types, np.int32)

  def document_boundaries(self) -> tuple[list[int], list[int]]:
    """(ids before, ids after) a document in a concatenated pre-training stream.

    BOS where the folder's tokenizer adds one to every text (Llama 3's
    template, `add_bos_token` in Llama 2's config); EOS after every document
    (GPT-2's `<|endoftext|>`, Llama's `</s>` / `<|end_of_text|>`); [SEP] for
    WordPiece vocabularies, which have no EOS.
    """
    def token_id(key: str) -> int | None:
      name = _token_name(self.config.get(key))
      return self.backend.token_to_id(name) if name else None

    if self.kind == "WordPiece":
      return [], [self.sep_id] if self.sep_id is not None else []
    bos, eos = token_id("bos_token"), token_id("eos_token")
    if eos is None and "<|endoftext|>" in self.special_tokens:  # GPT-2 folders without a config
      eos = self.backend.token_to_id("<|endoftext|>")
    template = self.backend.encode("", add_special_tokens=True).ids  # what the folder prepends
    adds_bos = bool(template) and template[0] == bos if bos is not None else False
    adds_bos = adds_bos or bool(self.config.get("add_bos_token"))
    return ([bos] if adds_bos and bos is not None else []), ([eos] if eos is not None else [])

  def save(self, directory: str) -> None:
    """`tokenizer.json`, `tokenizer_config.json` and the model's vocabulary files."""
    self.backend.save(os.path.join(directory, FILENAME))
    self.backend.model.save(directory)  # vocab.txt, or vocab.json + merges.txt
    config = {"tokenizer_class": _TOKENIZER_CLASS.get(self.kind, "PreTrainedTokenizerFast"),
              **self.config}
    with open(os.path.join(directory, CONFIG_FILENAME), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)


# Texts longer than this many characters are encoded in pieces (`HfTokenizer.encode_batch`).
LONG_TEXT_CHARS = 1 << 16


def whitespace_cuts(text: str, size: int) -> list[str]:
  """`text` in pieces of `size` characters or fewer, each cut where a run of whitespace
  starts after a non-space character (the run goes with the next piece); a piece is
  longer only where no such place comes within `size` characters.  Joined, the pieces
  are `text`."""
  pieces, start = [], 0
  while len(text) - start > size:
    cut = _last_cut(text, start, start + size) or _first_cut(text, start + size)
    if cut is None:
      break
    pieces.append(text[start:cut])
    start = cut
  pieces.append(text[start:])
  return pieces


# A non-space character, then one of the whitespace characters every `\s` knows.  Python's
# `\s` holds for every Unicode White_Space character (the `\s` of the tokenizers'
# regexes) and a few more, so `[^\s]` is `\S` there too.
_CUT = re.compile(r"[^\s][ \t\n\r\f\v]")


def _last_cut(text: str, start: int, end: int) -> int | None:
  """The last cut in text[start:end] that leaves a nonempty first piece, or None."""
  for lo in (max(start, end - 4096), start):  # most texts have one near the end
    last = None
    for last in _CUT.finditer(text, lo, end + 1):
      pass
    if last is not None:
      return last.start() + 1
  return None


def _first_cut(text: str, start: int) -> int | None:
  match = _CUT.search(text, start)
  return match.start() + 1 if match else None


# Where a text cut where whitespace follows a non-space character encodes to the same ids
# as the whole text.  GPT-2's byte-level regex never puts a non-space character and the
# whitespace after it into one pre-token (" x" is one, "x " never; a run of whitespace
# before a word is split as "\n   " + " word" wherever it starts), and it looks at nothing
# before a match, as long as no normalizer can turn a character into whitespace (NFC and
# NFD cannot); BERT's and the whitespace pre-tokenizers split at any whitespace, after
# normalizers that map each character on its own.
_WHITESPACE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_LOCAL_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "BertNormalizer"}
_NO_NEW_SPACE_NORMALIZERS = {"NFC", "NFD"}


def _cuts_at_whitespace(backend: tokenizers.Tokenizer) -> bool:
  """Whether cutting a text where whitespace follows a non-space character leaves its ids
  unchanged: true only for the pipelines above, without added tokens that strip the
  whitespace around them or hold whitespace."""
  spec = json.loads(backend.to_str())

  def types(component: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if component is None:
      return []
    return component[key] if component["type"] == "Sequence" else [component]

  norms = {n["type"] for n in types(spec.get("normalizer"), "normalizers")}
  pre = types(spec.get("pre_tokenizer"), "pretokenizers")
  if len(pre) != 1:
    return False
  if pre[0]["type"] in _WHITESPACE_PRE_TOKENIZERS:
    pipeline_ok = norms <= _LOCAL_NORMALIZERS
  else:
    pipeline_ok = (pre[0]["type"] == "ByteLevel" and pre[0].get("use_regex", True)
                   and not pre[0].get("add_prefix_space", False)
                   and norms <= _NO_NEW_SPACE_NORMALIZERS)
  model_ok = spec["model"]["type"] == "WordPiece" or (
      spec["model"]["type"] == "BPE" and not spec["model"].get("dropout"))
  added_ok = not any(t.get("lstrip") or t.get("rstrip") or any(c.isspace() for c in t["content"])
                     for t in spec.get("added_tokens") or ())
  return pipeline_ok and model_ok and added_ok


_TOKENIZER_CLASS = {"WordPiece": "BertTokenizer", "BPE": "GPT2Tokenizer"}
# The tokenizer_config.json options a saved tokenizer carries on.
_KEPT_OPTIONS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length",
                 "unk_token", "cls_token", "sep_token", "pad_token", "mask_token", "bos_token",
                 "eos_token", "add_bos_token", "add_eos_token", "tokenizer_class")


def _token_name(value: Any) -> str | None:
  if isinstance(value, dict):  # older configs store AddedToken dicts
    return value.get("content")
  return value or None


def _json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _wordpiece(vocab: str | dict[str, int], options: dict[str, Any]) -> tokenizers.Tokenizer:
  """BERT's tokenizer from its vocabulary, as `transformers` builds it from `vocab.txt`."""
  if isinstance(vocab, str):
    vocab = models.WordPiece.read_file(vocab)
  unk = _token_name(options.get("unk_token")) or "[UNK]"
  if unk not in vocab:
    raise UserError(f"the WordPiece vocabulary has no unknown token {unk!r}")
  lowercase = options.get("do_lower_case", True)
  backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
  backend.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=options.get("tokenize_chinese_chars", True),
      strip_accents=options.get("strip_accents"), lowercase=lowercase)
  backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  backend.decoder = decoders.WordPiece(prefix="##")
  names = {k: _token_name(options.get(f"{k}_token")) or v for k, v in _BERT_SPECIALS.items()}
  if names["cls"] in vocab and names["sep"] in vocab:
    backend.post_processor = processors.BertProcessing(
        (names["sep"], vocab[names["sep"]]), (names["cls"], vocab[names["cls"]]))
  backend.add_special_tokens([t for t in names.values() if t in vocab])
  return backend


def _byte_level_bpe(vocab: str | dict[str, int], merges: str | list[tuple[str, str]],
                    specials: Sequence[str]) -> tokenizers.Tokenizer:
  """GPT-2's tokenizer from `vocab.json` + `merges.txt`, as `transformers` builds it."""
  if isinstance(vocab, str):
    vocab, merges = models.BPE.read_file(vocab, merges)
  backend = tokenizers.Tokenizer(models.BPE(vocab, merges))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  backend.add_special_tokens([t for t in specials if t in vocab])
  return backend


def load(directory: str) -> HfTokenizer | None:
  """The tokenizer of a Hugging Face model folder, or None if it has none."""
  p = lambda name: os.path.join(directory, name)  # noqa: E731
  config = {k: v for k, v in _json(p(CONFIG_FILENAME)).items() if k in _KEPT_OPTIONS}
  saved = _json(p(FILENAME))
  if "model" in saved:
    return HfTokenizer(tokenizers.Tokenizer.from_file(p(FILENAME)), config)
  if saved.get("type") in ("byte_bpe", "wordpiece"):
    return _from_legacy(saved, p(FILENAME))
  models_found = [name for name in sentencepiece_json.FILENAMES if os.path.exists(p(name))]
  if models_found:
    return from_sentencepiece(p(models_found[0]), _json(p(CONFIG_FILENAME)))
  if os.path.exists(p("vocab.json")) and os.path.exists(p("merges.txt")):
    added = _json(p(CONFIG_FILENAME)).get("added_tokens_decoder") or {}
    specials = [v["content"] for v in added.values() if v.get("special")] or ["<|endoftext|>"]
    return HfTokenizer(_byte_level_bpe(p("vocab.json"), p("merges.txt"), specials), config)
  if os.path.exists(p("vocab.txt")):
    return HfTokenizer(_wordpiece(p("vocab.txt"), config), config)
  return None


def from_sentencepiece(path: str, options: dict[str, Any] | None = None) -> HfTokenizer:
  """A SentencePiece model file (Llama 2's `tokenizer.model`, T5's `spiece.model`) as a
  `tokenizers` pipeline (data/sentencepiece_json.py), with the sentinels and BOS/EOS
  options of the folder's tokenizer_config.json (`options`)."""
  options = dict(options or {})
  proto = sentencepiece_json.read_model(path)
  sentinels = [t for t in options.get("additional_special_tokens") or ()
               if SENTINEL.fullmatch(_token_name(t) or "")]
  # transformers' T5Tokenizer adds 100 sentinels unless its config says otherwise.
  default_extra = 100 if str(options.get("tokenizer_class", "")).startswith("T5") else 0
  extra_ids = int(options.get("extra_ids", len(sentinels) or default_extra))
  backend = sentencepiece_json.backend(proto, path, extra_ids, options.get("add_bos_token"),
                                       options.get("add_eos_token"))
  config = {**sentencepiece_json.special_names(proto),
            **{k: v for k, v in options.items() if k in _KEPT_OPTIONS},
            # The tokenizer.json `save` writes is the whole pipeline: load it as it is.
            "tokenizer_class": "PreTrainedTokenizerFast"}
  return HfTokenizer(backend, config)


SENTINEL = re.compile(r"<extra_id_\d+>")


def _from_legacy(saved: dict[str, Any], where: str) -> HfTokenizer:
  """The `tokenizer.json` of this project's earlier pure-Python tokenizers."""
  if saved["type"] == "byte_bpe":
    merges = [tuple(m.split(" ")) for m in saved["merges"]]
    return HfTokenizer(_byte_level_bpe(saved["vocab"], merges, saved.get("special_tokens", ())))
  options = {"do_lower_case": saved.get("lowercase", True),
             "strip_accents": saved.get("strip_accents"),
             "tokenize_chinese_chars": saved.get("tokenize_chinese_chars", True),
             **{f"{k}_token": saved[f"{k}_token"] for k in _BERT_SPECIALS
                if f"{k}_token" in saved}}
  if not isinstance(saved.get("vocab"), list):
    raise UserError(f"{where}: a wordpiece tokenizer.json needs its vocabulary as a list")
  vocab = {t: i for i, t in enumerate(saved["vocab"])}
  return HfTokenizer(_wordpiece(vocab, options), options)
