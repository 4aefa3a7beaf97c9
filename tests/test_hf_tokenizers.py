"""Pretrained models' tokenizers read from their folders (no `transformers` needed here).

tests/hf/test_tokenizers.py checks the same tokenizers against `transformers`.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tokenizers

from reparam_jax.data import hf_tokenizers
from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError


@pytest.fixture(scope="module")
def minilm(raw_data_dir):
  return os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def sst2_train(raw_data_dir):
  with open(os.path.join(raw_data_dir, "sst2", "train.tsv"), encoding="utf-8") as f:
    return [row.split("\t")[0] for row in f.read().split("\n")[1:] if row.strip()]


def test_minilm_encode_neither_pads_nor_truncates(minilm):
  # The folder's tokenizer.json pads and truncates everything to 128 tokens.
  tok = hf_tokenizers.load(minilm)
  assert tok.encode("hello").tolist() == [7592]
  assert len(tok.encode("word " * 300)) == 300
  ids, types = tok.build_inputs([7592], [2088])
  assert ids.tolist() == [101, 7592, 102, 2088, 102] and types.tolist() == [0, 0, 0, 1, 1]
  assert tok.decode(tok.encode("a [MASK] b")) == "a [MASK] b"


def test_vocab_txt_alone_gives_the_published_tokenizer_on_all_of_sst2(minilm, sst2_train,
                                                                       tmp_path):
  """Built from vocab.txt + tokenizer_config.json, as for a folder without tokenizer.json."""
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(minilm, name), tmp_path / name)
  published, built = hf_tokenizers.load(minilm), hf_tokenizers.load(str(tmp_path))
  assert "model" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert [a.tolist() for a in built.encode_batch(sst2_train)] == [
      a.tolist() for a in published.encode_batch(sst2_train)]


def test_saved_tokenizer_is_reloaded_by_load_tokenizer(minilm, sst2_train, tmp_path):
  tok = hf_tokenizers.load(minilm)
  tok.save(str(tmp_path))
  assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(os.listdir(tmp_path))
  again = load_tokenizer(str(tmp_path))
  for text in sst2_train[:500]:
    np.testing.assert_array_equal(again.encode(text), tok.encode(text))


def test_the_earlier_pure_python_tokenizer_files_still_load(minilm, sst2_train, tmp_path):
  """Workdirs imported before the switch to `tokenizers` hold this project's old format."""
  with open(os.path.join(minilm, "vocab.txt"), encoding="utf-8") as f:
    vocab = f.read().split("\n")[:-1]
  wordpiece = tmp_path / "wordpiece"
  wordpiece.mkdir()
  (wordpiece / "tokenizer.json").write_text(json.dumps(
      {"type": "wordpiece", "vocab": vocab, "lowercase": True, "strip_accents": None,
       "tokenize_chinese_chars": True, "unk_token": "[UNK]", "cls_token": "[CLS]",
       "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}))
  new, old = hf_tokenizers.load(minilm), load_tokenizer(str(wordpiece))
  for text in sst2_train[:500] + ["a [MASK] b"]:
    assert old.encode(text).tolist() == new.encode(text).tolist(), text

  trainer = tokenizers.ByteLevelBPETokenizer()
  trainer.train_from_iterator(sst2_train[:2000], vocab_size=500,
                              special_tokens=["<|endoftext|>"])
  bpe_dir = tmp_path / "bpe_hf"
  bpe_dir.mkdir()
  trainer.save_model(str(bpe_dir))
  model = json.loads(trainer.to_str())["model"]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  legacy = tmp_path / "bpe_old"
  legacy.mkdir()
  (legacy / "tokenizer.json").write_text(json.dumps(
      {"type": "byte_bpe", "vocab": model["vocab"], "merges": merges,
       "special_tokens": ["<|endoftext|>"]}))
  new, old = hf_tokenizers.load(str(bpe_dir)), load_tokenizer(str(legacy))
  for text in sst2_train[2000:2500] + ["x<|endoftext|>y"]:
    assert old.encode(text).tolist() == new.encode(text).tolist(), text
    assert old.decode(old.encode(text)) == text


def test_a_wordpiece_vocabulary_without_unk_is_a_user_error(tmp_path):
  (tmp_path / "vocab.txt").write_text("[CLS]\n[SEP]\nhello\n")
  with pytest.raises(UserError, match="no unknown token"):
    hf_tokenizers.load(str(tmp_path))


def test_missing_tokenizer_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no tokenizer"):
    load_tokenizer(str(tmp_path))


def _stdlib_text(chars: int) -> str:
  """Python's own sources, concatenated: newlines after code, blank lines, indented
  lines, trailing spaces, tabs, non-ASCII."""
  import sysconfig  # noqa: PLC0415
  root = sysconfig.get_paths()["stdlib"]
  parts, size = [], 0
  for name in sorted(os.listdir(root)):
    if name.endswith(".py") and size < chars:
      with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
        parts.append(f.read())
      size += len(parts[-1])
  return "".join(parts)[:chars]


def _adversarial_text(chars: int) -> str:
  """Random runs of whitespace of every kind next to letters, digits, punctuation,
  contractions and the special token."""
  rng = np.random.default_rng(0)
  alphabet = ["\n", "\n", "\n", " ", "  ", "\t", "\r\n", "\xa0", "\u2028", "\x1c", "a", "Bc",
              "é", "1", "23", ".", "'s", "'ll", "(", "<|endoftext|>", "漢"]
  return "".join(rng.choice(alphabet, chars // 2))[:chars]


def _byte_level_bpe(text: str, add_prefix_space: bool = False) -> hf_tokenizers.HfTokenizer:
  """A GPT-2-style tokenizer (no prefix space unless asked) trained on `text`."""
  backend = tokenizers.Tokenizer(tokenizers.models.BPE())
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
  backend.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=600, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator([text[:200_000]], trainer)
  return hf_tokenizers.HfTokenizer(backend)


def test_a_long_text_is_encoded_in_pieces_with_the_ids_of_the_whole_text(minilm, sst2_train):
  """Texts over LONG_TEXT_CHARS are cut where whitespace follows a non-space character,
  where GPT-2's byte-level regex and BERT's whitespace split cut anyway: the same ids, and
  no 800 K-character document held in the tokenizer's working copies at once."""
  size = hf_tokenizers.LONG_TEXT_CHARS
  code, noise = _stdlib_text(5 * size), _adversarial_text(3 * size)
  prose = "\n".join(sst2_train)[:4 * size]
  bpe, wordpiece = _byte_level_bpe(code + noise), hf_tokenizers.load(minilm)
  for tok, texts in ((bpe, [code, noise, "short\ntext"]), (wordpiece, [prose, noise])):
    assert tok.cuts_at_whitespace
    for text in texts:
      pieces = hf_tokenizers.whitespace_cuts(text, size)
      assert "".join(pieces) == text
      if len(text) > size:
        assert len(pieces) > len(text) // size and max(map(len, pieces)) <= size
    whole = [tok.backend.encode(t, add_special_tokens=False).ids for t in texts]
    assert [ids.tolist() for ids in tok.encode_batch(texts)] == whole


def test_tokenizers_that_could_encode_a_cut_differently_get_the_whole_text(minilm):
  """A prefix space (each piece would gain one), a normalizer that can make whitespace,
  whitespace-stripping added tokens: no cuts, so encode_batch is encode."""
  prefixed = _byte_level_bpe(_stdlib_text(50_000), add_prefix_space=True)
  assert not prefixed.cuts_at_whitespace
  text = _stdlib_text(3 * hf_tokenizers.LONG_TEXT_CHARS)
  assert prefixed.encode_batch([text])[0].tolist() == prefixed.backend.encode(
      text, add_special_tokens=False).ids
  nfkc = _byte_level_bpe(_stdlib_text(50_000))
  nfkc.backend.normalizer = tokenizers.normalizers.NFKC()
  assert not hf_tokenizers.HfTokenizer(nfkc.backend).cuts_at_whitespace
  stripping = hf_tokenizers.load(minilm).backend
  stripping.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True)])
  assert not hf_tokenizers.HfTokenizer(stripping).cuts_at_whitespace
  metaspace = tokenizers.Tokenizer(tokenizers.models.Unigram())
  metaspace.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  assert not hf_tokenizers.HfTokenizer(metaspace).cuts_at_whitespace
