"""Data: offline TFDS preparation, deterministic resumable order, exact eval coverage."""

import os
import subprocess
import sys

import numpy as np
import pytest

from reparam_jax.data import lm_text, raw_files, tfds_builders
from reparam_jax.data.pipeline import train_loader
from reparam_jax.data.tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer
from reparam_jax.errors import UserError


@pytest.fixture(scope="module")
def shakespeare(raw_data_dir, tfds_dir):
  builder = tfds_builders.load_builder("tiny_shakespeare", raw_dir=raw_data_dir,
                                       tfds_dir=tfds_dir)
  source = builder.as_data_source()
  return {k: source[k][0]["text"].decode("utf-8") for k in ("train", "validation")}


def test_shakespeare_split_is_90_10_by_position(shakespeare, raw_data_dir):
  with open(f"{raw_data_dir}/tinyshakespeare/input.txt", encoding="utf-8") as f:
    text = f.read()
  assert len(shakespeare["train"]) == 1_003_854
  assert shakespeare["train"] + shakespeare["validation"] == text
  assert CharTokenizer.fit(shakespeare.values()).vocab_size == 65


def test_missing_raw_dataset_names_expected_path(tmp_path):
  with pytest.raises(UserError, match=r"expected .*tinyshakespeare/input.txt"):
    tfds_builders.load_builder("tiny_shakespeare", raw_dir=str(tmp_path / "empty"),
                               tfds_dir=str(tmp_path / "tfds"))


def test_processes_preparing_one_folder_at_once_all_get_the_dataset(raw_data_dir, tmp_path):
  """Test workers, sweep points and the processes of a one-machine run share a data folder."""
  code = ("import sys; from reparam_jax.data import tfds_builders; "
          "b = tfds_builders.load_builder('tiny_shakespeare', raw_dir=sys.argv[1], tfds_dir=sys.argv[2]); "
          "print(len(b.as_data_source()['train'][0]['text']))")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", code, raw_data_dir, str(tmp_path / "tfds")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], "\n-----\n".join(o[-1500:] for o in outs)
  assert [o.split()[-1] for o in outs] == ["1003854"] * 3


def _take(it, n):
  return [next(it)["tokens"].copy() for _ in range(n)]


def test_order_is_deterministic_given_seed_and_resumable():
  source = lm_text.WindowSource(np.arange(1000, dtype=np.int32), 8)
  a = _take(train_loader(source, 4, seed=1), 6)
  b = _take(train_loader(source, 4, seed=1), 6)
  c = _take(train_loader(source, 4, seed=2), 6)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  it = train_loader(source, 4, seed=1)
  _take(it, 3)
  state = it.get_state()
  resumed = train_loader(source, 4, seed=1)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(resumed, 3)), np.stack(a[3:]))


def test_windows_are_consecutive_tokens():
  source = lm_text.WindowSource(np.arange(100, dtype=np.int32), 8)
  assert len(source) == 92
  np.testing.assert_array_equal(source[5]["tokens"], np.arange(5, 14))


def test_eval_chunks_cover_every_target_once():
  tokens = np.arange(1, 104, dtype=np.int32)  # 102 targets: not a multiple of 16 or 4*16
  seen = []
  for batch in lm_text.eval_chunks(tokens, 16, 4):
    assert batch["tokens"].shape == (4, 17) and batch["weights"].shape == (4, 16)
    targets = batch["tokens"][:, 1:]
    seen.extend(targets[batch["weights"] > 0].tolist())
  assert seen == tokens[1:].tolist()


def test_sentencepiece_tokenizer_roundtrip_and_save(tmp_path, shakespeare):
  lines = shakespeare["train"].splitlines()[:3000]
  tok = SentencePieceTokenizer.fit(lines, vocab_size=200)
  assert tok.vocab_size == 200
  text = "ROMEO: what light through yonder window breaks"
  assert tok.decode(tok.encode(text)) == text
  tok.save(str(tmp_path))
  again = load_tokenizer(str(tmp_path))
  np.testing.assert_array_equal(again.encode(text), tok.encode(text))


def test_malformed_tsv_rows_are_reported_with_file_and_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_bytes(b"sentence\tlabel\ngood movie\t1\nno label here\n"
                   b"bad label\t7\n\t0\n\xff\xfe broken\t1\nfine\t0\n")
  with pytest.raises(UserError, match=r"train.tsv:3: malformed row"):
    list(raw_files.read_labelled_tsv(path, num_classes=2))
  rows = list(raw_files.read_labelled_tsv(path, num_classes=2, skip_malformed=True))
  assert rows == [("good movie", 1), ("fine", 0)]


def test_read_all_gives_what_tfds_decodes(raw_data_dir, tfds_dir):
  """The direct proto parse of every record equals TFDS's own per-record decoding."""
  source = tfds_builders.load_builder("sst2", raw_dir=raw_data_dir,
                                      tfds_dir=tfds_dir).as_data_source()
  for split in ("train", "validation"):
    columns = tfds_builders.read_all(source[split], ("idx", "label", "sentence"))
    assert all(len(v) == len(source[split]) for v in columns.values())
    for i in (*range(0, len(source[split]), 97), len(source[split]) - 1):
      row = source[split][i]
      assert [columns[k][i] for k in ("idx", "label", "sentence")] == [
          row["idx"], row["label"], row["sentence"]], (split, i)


def test_sst2_prepares_offline(raw_data_dir, tfds_dir):
  source = tfds_builders.load_builder("sst2", raw_dir=raw_data_dir,
                                      tfds_dir=tfds_dir).as_data_source()
  assert len(source["train"]) == 67_349 and len(source["validation"]) == 872
  labels = [source["validation"][i]["label"] for i in range(872)]
  assert sum(labels) == 444
