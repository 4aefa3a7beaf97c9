"""GPT-2 BPE and BERT WordPiece, checked token for token against `transformers`.

The vocabularies are trained here with the `tokenizers` library on the
Shakespeare and SST-2 text (nothing is downloaded); `transformers`' slow
(pure-Python reference) and fast tokenizers then read the same files.
"""

import json
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from reparam_jax.data import hf_tokenizers  # noqa: E402
from reparam_jax.data.tokenizers import load_tokenizer  # noqa: E402

EDGE_CASES = [
    "Café naïve résumé — “quoted” façade", "中文字符 and 日本語 mixed",
    "  leading   spaces\n\nnewlines\t",
    "numbers 12345 3.14 1,000,000", "emoji 🙂 and symbols $^`~|", "don't won't I'm we've they're",
    "ALL CAPS SHOUT", "a\x00control\x07chars", "", " ", "Ünïcödé ÀÉÎÕÜ ß",
]


def _sentences(raw_data_dir: str, n: int = 200) -> list[str]:
  with open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  shakespeare = lines[:: max(1, len(lines) // n)][:n]
  with open(os.path.join(raw_data_dir, "sst2", "dev.tsv"), encoding="utf-8") as f:
    sst2 = [row.split("\t")[0] for row in f.read().split("\n")[1:] if row.strip()][:n]
  return shakespeare + sst2


@pytest.fixture(scope="module")
def corpus(raw_data_dir):
  return _sentences(raw_data_dir)


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory, corpus):
  folder = str(tmp_path_factory.mktemp("bpe"))
  trainer = tokenizers.ByteLevelBPETokenizer()
  trainer.train_from_iterator(corpus * 3, vocab_size=600, min_frequency=2,
                              special_tokens=["<|endoftext|>"])
  trainer.save_model(folder)
  return folder


@pytest.fixture(scope="module")
def wordpiece_folder(tmp_path_factory, corpus):
  folder = str(tmp_path_factory.mktemp("wordpiece"))
  trainer = tokenizers.BertWordPieceTokenizer(lowercase=True)
  trainer.train_from_iterator(corpus * 3, vocab_size=800, min_frequency=2)
  trainer.save_model(folder)
  return folder


def test_bpe_matches_transformers(bpe_folder, corpus):
  ours = hf_tokenizers.load_hf_folder(bpe_folder)
  assert isinstance(ours, hf_tokenizers.ByteLevelBPETokenizer)
  slow = transformers.GPT2Tokenizer(os.path.join(bpe_folder, "vocab.json"),
                                    os.path.join(bpe_folder, "merges.txt"))
  fast = transformers.GPT2TokenizerFast(os.path.join(bpe_folder, "vocab.json"),
                                        os.path.join(bpe_folder, "merges.txt"))
  assert ours.vocab_size == len(slow)
  texts = corpus + EDGE_CASES + ["two docs<|endoftext|>joined"]
  for text in texts:
    ids = ours.encode(text).tolist()
    assert ids == slow.encode(text), text
    assert ids == fast.encode(text), text
    assert ours.decode(ids) == slow.decode(ids) == text, text
  assert ours.encode("a<|endoftext|>b").tolist().count(ours.vocab["<|endoftext|>"]) == 1


def test_wordpiece_matches_transformers(wordpiece_folder, corpus):
  ours = hf_tokenizers.load_hf_folder(wordpiece_folder)
  assert isinstance(ours, hf_tokenizers.WordPieceTokenizer)
  vocab = os.path.join(wordpiece_folder, "vocab.txt")
  slow = transformers.BertTokenizer(vocab, do_lower_case=True)
  fast = transformers.BertTokenizerFast(vocab, do_lower_case=True)
  assert ours.vocab_size == len(slow)
  unk = 0
  for text in corpus + EDGE_CASES + ["a [MASK] token", "pair one"]:
    ids = ours.encode(text).tolist()
    assert ids == slow.encode(text, add_special_tokens=False), text
    assert ids == fast.encode(text, add_special_tokens=False), text
    assert ours.build_inputs(ids)[0].tolist() == slow.encode(text), text
    with_specials, types = ours.build_inputs(ids, ids[:3])
    assert with_specials.tolist() == slow.build_inputs_with_special_tokens(ids, ids[:3])
    assert types.tolist() == slow.create_token_type_ids_from_sequences(ids, ids[:3])
    assert ours.decode(ids) == slow.decode(ids, clean_up_tokenization_spaces=False), text
    unk += ids.count(ours.unk_id)
  assert unk < 20  # the vocabulary covers the corpus: the comparison is about real sub-words


def test_wordpiece_cased_keeps_accents(wordpiece_folder):
  vocab = os.path.join(wordpiece_folder, "vocab.txt")
  ours = hf_tokenizers.WordPieceTokenizer.from_files(vocab, lowercase=False)
  slow = transformers.BertTokenizer(vocab, do_lower_case=False)
  for text in EDGE_CASES + ["The Cat sat", "Héllo Wörld"]:
    assert ours.encode(text).tolist() == slow.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("folder", ["bpe_folder", "wordpiece_folder"])
def test_save_load_and_hf_files_round_trip(folder, request, tmp_path, corpus):
  src = request.getfixturevalue(folder)
  tok = load_tokenizer(src)  # a Hugging Face folder, found by load_tokenizer
  run = tmp_path / "run"
  run.mkdir()
  tok.save(str(run))
  assert json.loads((run / "tokenizer.json").read_text())["type"] in ("byte_bpe", "wordpiece")
  again = load_tokenizer(str(run))
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  tok.save_hf(str(hf_dir))
  auto = (transformers.GPT2Tokenizer if folder == "bpe_folder" else transformers.BertTokenizer
          ).from_pretrained(str(hf_dir))
  for text in corpus[:50]:
    ids = tok.encode(text)
    np.testing.assert_array_equal(again.encode(text), ids)
    assert auto.encode(text, add_special_tokens=False) == ids.tolist()


def test_tokenizers_json_only_folder(bpe_folder, wordpiece_folder, tmp_path, corpus):
  """A folder with only the `tokenizers` library's tokenizer.json is read too."""
  for name, src in (("bpe", bpe_folder), ("wp", wordpiece_folder)):
    fast_cls = transformers.GPT2TokenizerFast if name == "bpe" else transformers.BertTokenizerFast
    fast = fast_cls.from_pretrained(src)
    only = tmp_path / name
    only.mkdir()
    fast.backend_tokenizer.save(str(only / "tokenizer.json"))
    ours = load_tokenizer(str(only))
    for text in corpus[:50] + EDGE_CASES:
      assert ours.encode(text).tolist() == fast.encode(text, add_special_tokens=False), text


def test_missing_tokenizer_is_a_user_error(tmp_path):
  from reparam_jax.errors import UserError
  with pytest.raises(UserError, match="no tokenizer"):
    load_tokenizer(str(tmp_path))
