"""The tokenizers of pretrained GPT-2 and BERT models, from local files, in pure Python.

* `ByteLevelBPETokenizer`: GPT-2's byte-level BPE (`vocab.json` + `merges.txt`).
  Text is split by GPT-2's pre-tokenization regex, each piece's UTF-8 bytes
  are mapped to printable characters, then merged pair by pair in merge-rank
  order.
* `WordPieceTokenizer`: BERT's WordPiece (`vocab.txt`).  Basic tokenization
  (drop control characters, space out CJK ideographs, optional lower-casing
  and accent stripping, split punctuation off) and then greedy
  longest-match-first sub-words with `##` continuations.

Both have the interface of `reparam_jax/data/tokenizers.py` (`encode`,
`decode`, `vocab_size`, `save`); `save` writes one self-contained
`tokenizer.json` that `load_tokenizer` reads back, `save_hf` the Hugging
Face files.  `encode` adds no special tokens: `WordPieceTokenizer.build_inputs`
adds BERT's [CLS]/[SEP].  Special tokens written literally in the text
(`<|endoftext|>`, `[MASK]`) are kept whole, as Hugging Face's tokenizers do.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from typing import Any, Iterable, Sequence

import numpy as np
import regex

from reparam_jax.errors import UserError

FILENAME = "tokenizer.json"

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbol
# runs (each with one optional leading space), then whitespace.
_GPT2_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
  """GPT-2's reversible map from the 256 byte values to printable characters.

  Printable Latin-1 bytes stand for themselves; the rest (controls, space,
  soft hyphen) are shifted to code points 256 and up, so every token is a
  visible string and no byte is lost.
  """
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  table, shifted = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + shifted)
      shifted += 1
  return table


def _split_specials(text: str, specials: Sequence[str]) -> list[tuple[str, bool]]:
  """`text` cut into (piece, is_special) around literal special tokens."""
  if not specials:
    return [(text, False)]
  pattern = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len,
                                                                      reverse=True)))
  out, start = [], 0
  for m in pattern.finditer(text):
    if m.start() > start:
      out.append((text[start:m.start()], False))
    out.append((m.group(), True))
    start = m.end()
  if start < len(text):
    out.append((text[start:], False))
  return out


class ByteLevelBPETokenizer:
  """GPT-2's byte-level BPE."""

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
               special_tokens: Sequence[str] = ()):
    self.vocab = dict(vocab)
    self.merges = [tuple(m) for m in merges]
    self.special_tokens = tuple(s for s in special_tokens if s in self.vocab)
    self._ranks = {pair: i for i, pair in enumerate(self.merges)}
    self._inverse = {i: t for t, i in self.vocab.items()}
    self._byte_char = byte_to_char()
    self._char_byte = {c: b for b, c in self._byte_char.items()}
    self.vocab_size = max(self.vocab.values()) + 1
    self._cache: dict[str, tuple[str, ...]] = {}

  @classmethod
  def from_files(cls, vocab_json: str, merges_txt: str,
                 special_tokens: Sequence[str] = ("<|endoftext|>",)) -> "ByteLevelBPETokenizer":
    with open(vocab_json, encoding="utf-8") as f:
      vocab = json.load(f)
    merges = []
    with open(merges_txt, encoding="utf-8") as f:
      for line in f.read().split("\n"):
        if line.startswith("#version") or not line.strip():
          continue
        parts = line.split(" ")
        if len(parts) != 2:
          raise UserError(f"{merges_txt}: malformed merge {line!r} (expected two symbols)")
        merges.append((parts[0], parts[1]))
    return cls(vocab, merges, special_tokens)

  def _bpe(self, word: str) -> tuple[str, ...]:
    if word in self._cache:
      return self._cache[word]
    parts = list(word)
    while len(parts) > 1:
      ranked = [(self._ranks.get(pair, len(self._ranks)), i)
                for i, pair in enumerate(zip(parts, parts[1:]))]
      best_rank, _ = min(ranked)
      if best_rank == len(self._ranks):
        break
      pair = self.merges[best_rank]
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    if len(self._cache) < 100_000:
      self._cache[word] = tuple(parts)
    return tuple(parts)

  def tokenize(self, text: str) -> list[str]:
    tokens: list[str] = []
    for piece, special in _split_specials(text, self.special_tokens):
      if special:
        tokens.append(piece)
        continue
      for word in _GPT2_SPLIT.findall(piece):
        tokens.extend(self._bpe("".join(self._byte_char[b] for b in word.encode("utf-8"))))
    return tokens

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.asarray([self.vocab[t] for t in self.tokenize(text)], np.int32)
    except KeyError as e:
      raise UserError(f"BPE produced {e.args[0]!r}, which vocab.json lacks: vocab.json and "
                      "merges.txt do not belong together") from None

  def decode(self, ids: Iterable[int]) -> str:
    text = "".join(self._inverse[int(i)] for i in ids)
    return bytes(self._char_byte[c] for c in text).decode("utf-8", errors="replace")

  def save(self, directory: str) -> None:
    with open(os.path.join(directory, FILENAME), "w", encoding="utf-8") as f:
      json.dump({"type": "byte_bpe", "vocab": self.vocab,
                 "merges": [" ".join(m) for m in self.merges],
                 "special_tokens": list(self.special_tokens)}, f, ensure_ascii=False)

  def save_hf(self, directory: str) -> None:
    """`vocab.json` + `merges.txt`, as Hugging Face's GPT2Tokenizer reads them."""
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump(self.vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))


def _is_whitespace(c: str) -> bool:
  return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
  return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_punctuation(c: str) -> bool:
  cp = ord(c)
  # All non-alphanumeric ASCII counts as punctuation (e.g. `$`, `^`), as in BERT.
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(c).startswith("P")


_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(c: str) -> bool:
  cp = ord(c)
  return any(lo <= cp <= hi for lo, hi in _CJK)


class WordPieceTokenizer:
  """BERT's WordPiece with its basic (whitespace/punctuation) pre-tokenization."""

  def __init__(self, vocab: Sequence[str], lowercase: bool = True,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
               unk_token: str = "[UNK]", cls_token: str = "[CLS]", sep_token: str = "[SEP]",
               pad_token: str = "[PAD]", mask_token: str = "[MASK]",
               max_chars_per_word: int = 100):
    self.tokens = list(vocab)
    self.vocab = {t: i for i, t in enumerate(self.tokens)}
    self.vocab_size = len(self.tokens)
    self.lowercase = lowercase
    self.strip_accents = lowercase if strip_accents is None else strip_accents
    self.tokenize_chinese_chars = tokenize_chinese_chars
    self.specials = {"unk": unk_token, "cls": cls_token, "sep": sep_token, "pad": pad_token,
                     "mask": mask_token}
    self.max_chars_per_word = max_chars_per_word
    if unk_token not in self.vocab:
      raise UserError(f"the WordPiece vocabulary has no unknown token {unk_token!r}")
    self.special_tokens = tuple(t for t in self.specials.values() if t in self.vocab)
    self.unk_id = self.vocab[unk_token]
    self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
        self.vocab.get(self.specials[k]) for k in ("cls", "sep", "pad", "mask"))

  @classmethod
  def from_files(cls, vocab_txt: str, **options: Any) -> "WordPieceTokenizer":
    with open(vocab_txt, encoding="utf-8") as f:
      tokens = [line.rstrip("\n").rstrip("\r") for line in f]
    while tokens and not tokens[-1]:
      tokens.pop()
    return cls(tokens, **options)

  def _basic(self, text: str) -> list[str]:
    text = "".join(" " if _is_whitespace(c) else c for c in text
                   if not (c in "\x00\ufffd" or _is_control(c)))
    if self.tokenize_chinese_chars:
      text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
    text = unicodedata.normalize("NFC", text)
    pieces = []
    for word in text.split():
      if self.lowercase:
        word = word.lower()
      if self.strip_accents:
        word = "".join(c for c in unicodedata.normalize("NFD", word)
                       if unicodedata.category(c) != "Mn")
      current = ""
      for c in word:
        if _is_punctuation(c):
          pieces.extend([current, c] if current else [c])
          current = ""
        else:
          current += c
      if current:
        pieces.append(current)
    return pieces

  def _wordpiece(self, word: str) -> list[str]:
    if len(word) > self.max_chars_per_word:
      return [self.specials["unk"]]
    out, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      else:
        return [self.specials["unk"]]
      out.append(piece)
      start = end
    return out

  def tokenize(self, text: str) -> list[str]:
    tokens: list[str] = []
    for piece, special in _split_specials(text, self.special_tokens):
      if special:
        tokens.append(piece)
      else:
        for word in self._basic(piece):
          tokens.extend(self._wordpiece(word))
    return tokens

  def encode(self, text: str) -> np.ndarray:
    return np.asarray([self.vocab[t] for t in self.tokenize(text)], np.int32)

  def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])` and its token types (0 for a, 1 for b)."""
    if self.cls_id is None or self.sep_id is None:
      raise UserError("the WordPiece vocabulary lacks [CLS] or [SEP]")
    ids = [self.cls_id, *ids_a, self.sep_id]
    types = [0] * len(ids)
    if ids_b is not None:
      ids += [*ids_b, self.sep_id]
      types += [1] * (len(ids_b) + 1)
    return np.asarray(ids, np.int32), np.asarray(types, np.int32)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    tokens = [self.tokens[int(i)] for i in ids]
    if skip_special_tokens:
      tokens = [t for t in tokens if t not in self.special_tokens]
    return " ".join(tokens).replace(" ##", "").strip()

  def _options(self) -> dict[str, Any]:
    return {"lowercase": self.lowercase, "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            **{f"{k}_token": v for k, v in self.specials.items()}}

  def save(self, directory: str) -> None:
    with open(os.path.join(directory, FILENAME), "w", encoding="utf-8") as f:
      json.dump({"type": "wordpiece", "vocab": self.tokens, **self._options()}, f,
                ensure_ascii=False)

  def save_hf(self, directory: str) -> None:
    """`vocab.txt` + `tokenizer_config.json`, as Hugging Face's BertTokenizer reads them."""
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
      f.write("".join(t + "\n" for t in self.tokens))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
              "strip_accents": self.strip_accents,
              "tokenize_chinese_chars": self.tokenize_chinese_chars,
              **{f"{k}_token": v for k, v in self.specials.items()}}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)


HfTokenizer = ByteLevelBPETokenizer | WordPieceTokenizer


def from_saved(saved: dict[str, Any], where: str) -> HfTokenizer:
  """A tokenizer from the `tokenizer.json` its `save` wrote."""
  kind = saved.get("type")
  if kind == "byte_bpe":
    merges = [tuple(m.split(" ")) for m in saved["merges"]]
    return ByteLevelBPETokenizer(saved["vocab"], merges, saved.get("special_tokens", ()))
  if kind == "wordpiece":
    options = {k: v for k, v in saved.items() if k not in ("type", "vocab")}
    return WordPieceTokenizer(saved["vocab"], **options)
  raise UserError(f"{where}: unknown tokenizer type {kind!r}")


def _json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _wordpiece_options(tok_config: dict[str, Any]) -> dict[str, Any]:
  options: dict[str, Any] = {
      "lowercase": tok_config.get("do_lower_case", True),
      "strip_accents": tok_config.get("strip_accents"),
      "tokenize_chinese_chars": tok_config.get("tokenize_chinese_chars", True)}
  for k in ("unk", "cls", "sep", "pad", "mask"):
    value = tok_config.get(f"{k}_token")
    if isinstance(value, dict):  # older configs store AddedToken dicts
      value = value.get("content")
    if value:
      options[f"{k}_token"] = value
  return options


def _bpe_specials(tok_config: dict[str, Any], vocab: dict[str, int]) -> list[str]:
  added = tok_config.get("added_tokens_decoder") or {}
  specials = [v["content"] for v in added.values() if v.get("special")]
  return specials or [t for t in ("<|endoftext|>",) if t in vocab]


def load_hf_folder(directory: str) -> HfTokenizer | None:
  """The tokenizer of a Hugging Face model folder, or None if it has none.

  Reads `vocab.json` + `merges.txt` (GPT-2), `vocab.txt` (BERT), or else a
  `tokenizer.json` of the `tokenizers` library with a BPE or WordPiece model.
  """
  p = functools.partial(os.path.join, directory)
  tok_config = _json(p("tokenizer_config.json"))
  if os.path.exists(p("vocab.json")) and os.path.exists(p("merges.txt")):
    with open(p("vocab.json"), encoding="utf-8") as f:
      vocab = json.load(f)
    return ByteLevelBPETokenizer.from_files(p("vocab.json"), p("merges.txt"),
                                            _bpe_specials(tok_config, vocab))
  if os.path.exists(p("vocab.txt")):
    return WordPieceTokenizer.from_files(p("vocab.txt"), **_wordpiece_options(tok_config))
  saved = _json(p(FILENAME))
  if "model" in saved:
    return _from_tokenizers_json(saved, tok_config, p(FILENAME))
  return None


def _from_tokenizers_json(saved: dict[str, Any], tok_config: dict[str, Any],
                          where: str) -> HfTokenizer:
  model = saved["model"]
  kind = model.get("type")
  if kind == "BPE":
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    for added in saved.get("added_tokens") or []:
      vocab.setdefault(added["content"], added["id"])
    specials = [a["content"] for a in saved.get("added_tokens") or [] if a.get("special")]
    return ByteLevelBPETokenizer(vocab, merges, specials)
  if kind == "WordPiece":
    vocab = sorted(model["vocab"], key=model["vocab"].get)
    norm = saved.get("normalizer") or {}
    options = _wordpiece_options(tok_config)
    if norm.get("type") == "BertNormalizer":
      options.update(lowercase=norm.get("lowercase", True),
                     strip_accents=norm.get("strip_accents"),
                     tokenize_chinese_chars=norm.get("handle_chinese_chars", True))
    options.setdefault("unk_token", model.get("unk_token", "[UNK]"))
    return WordPieceTokenizer(vocab, **options)
  raise UserError(f"{where}: tokenizer model {kind!r} is not supported (BPE or WordPiece only)")


def load(directory: str) -> HfTokenizer | None:
  """A saved (`save`) tokenizer in `directory`, else the folder's Hugging Face one."""
  saved = _json(os.path.join(directory, FILENAME))
  if saved.get("type") in ("byte_bpe", "wordpiece"):
    return from_saved(saved, os.path.join(directory, FILENAME))
  return load_hf_folder(directory)
