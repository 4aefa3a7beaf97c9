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
