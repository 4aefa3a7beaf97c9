"""Tokenize once (prepare_data), read the shards back, pack them into rows."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reparam_jax.config import base as base_config
from reparam_jax.data import corpus, token_shards
from reparam_jax.data.tokenizers import CharTokenizer, document_boundaries
from reparam_jax.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def write_corpus(folder: Path, files: int = 3, docs_per_file: int = 5) -> list[str]:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]
  all_docs = []
  for f in range(files):
    docs = [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(docs_per_file)]
    (folder / f"part-{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    all_docs += docs
  return all_docs


def corpus_config(source: str, out: Path, tokenizer: str = "char"):
  config = base_config.base_config()
  config.data.source = source
  config.data.prepared = str(out)
  config.data.tokenizer = tokenizer
  return config


def test_prepare_writes_one_shard_per_file_with_boundaries(tmp_path: Path,
                                                           raw_data_dir: str) -> None:
  docs = write_corpus(tmp_path / "corpus")
  minilm = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  config = corpus_config(f"jsonl:{tmp_path}/corpus/*.jsonl", tmp_path / "out", minilm)
  summary = corpus.prepare_from_config(config, progress=False)
  assert (summary["shards"], summary["documents"], summary["already_done"]) == (3, 15, 0)
  shards = token_shards.TokenShards(str(tmp_path / "out"))
  tok = shards.tokenizer()
  assert document_boundaries(tok) == ([], [tok.sep_id])  # WordPiece: [SEP] after each document
  assert len(shards) == 15 and shards.dtype == np.dtype("<u2")
  for i, doc in enumerate(docs):
    np.testing.assert_array_equal(shards[i]["tokens"], [*tok.encode(doc), tok.sep_id])
  assert shards.num_tokens == sum(len(tok.encode(d)) + 1 for d in docs) == summary["tokens"]
  # Run again: nothing to do.
  again = corpus.prepare_from_config(config, progress=False)
  assert (again["already_done"], again["documents"]) == (3, 0)


def test_a_killed_preparation_redoes_only_unfinished_shards(tmp_path: Path) -> None:
  write_corpus(tmp_path / "corpus", files=4)
  out = tmp_path / "out"
  config = corpus_config(f"jsonl:{tmp_path}/corpus/*.jsonl", out)
  corpus.prepare_from_config(config, progress=False)
  before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
  # What a kill leaves: shard 2's records half written under a temporary name, no .json.
  (out / "shard-00002-of-00004.json").unlink()
  (out / "shard-00002-of-00004.array_record").rename(
      out / "shard-00002-of-00004.array_record.tmp-999")
  with pytest.raises(UserError, match="1 of 4 shards are not prepared"):
    token_shards.TokenShards(str(out))
  summary = corpus.prepare_from_config(config, progress=False)
  assert (summary["already_done"], summary["documents"]) == (3, 5)
  after = {p.name: p.read_bytes() for p in out.glob("shard-*") if ".tmp-" not in p.name}
  assert after == before


def test_processes_split_the_shards(tmp_path: Path) -> None:
  write_corpus(tmp_path / "corpus", files=5)
  out = tmp_path / "out"
  config = corpus_config(f"jsonl:{tmp_path}/corpus/*.jsonl", out)
  first = corpus.prepare_from_config(config, process_index=0, process_count=2, progress=False)
  assert first["mine"] == 3
  with pytest.raises(UserError, match="2 of 5 shards are not prepared"):
    token_shards.TokenShards(str(out))
  second = corpus.prepare_from_config(config, process_index=1, process_count=2, progress=False)
  assert second["mine"] == 2 and second["already_done"] == 0
  assert len(token_shards.TokenShards(str(out))) == 25


def test_a_folder_of_another_source_is_refused(tmp_path: Path) -> None:
  write_corpus(tmp_path / "a")
  write_corpus(tmp_path / "b")
  corpus.prepare_from_config(corpus_config(f"jsonl:{tmp_path}/a/*.jsonl", tmp_path / "out"),
                             progress=False)
  with pytest.raises(UserError, match="holds shards of another source"):
    corpus.prepare_from_config(corpus_config(f"jsonl:{tmp_path}/b/*.jsonl", tmp_path / "out"),
                               progress=False)


def _rows(tmp_path: Path, packing: str, seq_len: int = 16, batch: int = 4, steps: int = 6):
  docs = write_corpus(tmp_path / "corpus", files=2, docs_per_file=10)
  config = corpus_config(f"jsonl:{tmp_path}/corpus/*.jsonl", tmp_path / "out")
  corpus.prepare_from_config(config, progress=False)
  shards = token_shards.TokenShards(str(tmp_path / "out"))
  it = corpus.packed_train_loader([shards], [1.0], seq_len, batch, seed=3, packing=packing)
  return docs, shards, [next(it) for _ in range(steps)], it


def test_concat_rows_are_full_cuts_of_documents(tmp_path: Path) -> None:
  _, shards, batches, _ = _rows(tmp_path, "concat")
  assert all(b["tokens"].shape == (4, 17) and set(b) == {"tokens"} for b in batches)
  text = [bytes(shards[i]["tokens"].astype(np.uint8)) for i in range(len(shards))]
  raw = corpus.pack([shards], [1.0], 17, 4, seed=3, packing="concat")
  rows = [next(iter(raw)) for _ in range(1)] + list(itertools.islice(iter(raw), 30))
  for r in rows:
    assert (r["tokens_segment_ids"] > 0).all()  # no padding: every row is full
    for s in set(r["tokens_segment_ids"].tolist()):
      piece = bytes(r["tokens"][r["tokens_segment_ids"] == s].astype(np.uint8))
      assert any(piece in doc for doc in text)  # each segment is a cut of one document
  # Over rows, whole documents come through: the first rows' pieces cover full documents.
  starts = sum(int((r["tokens_positions"] == 0).sum()) for r in rows)
  assert starts >= 10


def test_first_fit_rows_hold_documents_in_row_sized_pieces_with_segments_and_positions(
    tmp_path: Path) -> None:
  """Every document is packed whole, or, longer than a row, as consecutive row-sized pieces
  (each its own segment): over a few epochs every piece shows up, no token is dropped."""
  _, shards, batches, _ = _rows(tmp_path, "first_fit", seq_len=63)
  docs = [shards[i]["tokens"] for i in range(len(shards))]
  assert max(len(d) for d in docs) > 64  # some documents need more than one row
  whole = {tuple(d[i:i + 64]) for d in docs for i in range(0, len(d), 64)}
  raw = corpus.pack([shards], [1.0], 64, 4, seed=3, packing="first_fit")
  seen = set()
  for r in itertools.islice(iter(raw), 200):
    for s in set(r["tokens_segment_ids"].tolist()) - {0}:
      seen.add(tuple(r["tokens"][r["tokens_segment_ids"] == s]))
  assert seen == whole
  for b in batches:
    for tokens, seg, pos in zip(b["tokens"], b["segment_ids"], b["positions"]):
      for s in set(seg.tolist()) - {0}:
        where = np.flatnonzero(seg == s)
        assert (np.diff(where) == 1).all()
        np.testing.assert_array_equal(pos[where], np.arange(len(where)))
        assert tuple(tokens[where]) in whole
      assert (tokens[seg == 0] == 0).all()


def test_packed_iterator_resumes_from_its_state(tmp_path: Path) -> None:
  for packing in ("concat", "first_fit"):
    _, shards, _, it = _rows(tmp_path / packing, packing)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = corpus.packed_train_loader([shards], [1.0], 16, 4, seed=3, packing=packing)
    fresh.set_state(state)
    for want in expected:
      got = next(fresh)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_prepare_data_command_errors_are_one_line(tmp_path: Path) -> None:
  out = subprocess.run(
      [sys.executable, "-m", "reparam_jax.prepare_data", "--config=configs/lm/shakespeare_char.py",
       f"--config.data.source=jsonl:{tmp_path}/none/*.jsonl", f"--out={tmp_path}/o"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 2
  assert out.stderr.strip() == (f"error: data source 'jsonl:{tmp_path}/none/*.jsonl': the glob "
                                f"matches no file ({tmp_path}/none/*.jsonl); check the path")


def _bpe(specials: list[str], template_bos: str | None = None):
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors
  vocab = {t: i for i, t in enumerate(["a", "b", "ab", *specials])}
  backend = tokenizers.Tokenizer(models.BPE(vocab, [("a", "b")]))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.add_special_tokens(specials)
  if template_bos:
    backend.post_processor = processors.TemplateProcessing(
        single=f"{template_bos} $A", special_tokens=[(template_bos, vocab[template_bos])])
  return backend, vocab


def test_document_boundaries_follow_each_tokenizers_convention() -> None:
  import io

  import sentencepiece as spm

  from reparam_jax.data.hf_tokenizers import HfTokenizer
  from reparam_jax.data.tokenizers import SentencePieceTokenizer
  backend, vocab = _bpe(["<|endoftext|>"])  # GPT-2: EOS after a document, no BOS
  gpt2 = HfTokenizer(backend, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
  assert document_boundaries(gpt2) == ([], [vocab["<|endoftext|>"]])
  assert document_boundaries(HfTokenizer(backend)) == ([], [vocab["<|endoftext|>"]])
  # Llama 3: its tokenizer.json's template prepends <|begin_of_text|>.
  backend, vocab = _bpe(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>")
  llama3 = HfTokenizer(backend, {"bos_token": "<|begin_of_text|>",
                                 "eos_token": "<|end_of_text|>"})
  assert document_boundaries(llama3) == ([vocab["<|begin_of_text|>"]],
                                         [vocab["<|end_of_text|>"]])
  # SentencePiece: Llama 2's BOS and EOS; T5's model has no BOS.
  lines = ["the quick brown fox jumps over the lazy dog"] * 50
  assert document_boundaries(SentencePieceTokenizer.fit(lines, 40)) == ([2], [3])
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 vocab_size=40, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 minloglevel=2, hard_vocab_limit=False)
  assert document_boundaries(SentencePieceTokenizer(model.getvalue())) == ([], [1])
  assert document_boundaries(CharTokenizer("ab")) == ([], [])


def test_mixture_interleaves_folders_in_their_weights(tmp_path: Path) -> None:
  write_corpus(tmp_path / "a", files=2, docs_per_file=40)
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "x.jsonl").write_text("".join(json.dumps({"text": "to be " * (i % 7 + 1)}) + "\n"
                                                  for i in range(30)))
  corpus.prepare_from_config(corpus_config(f"jsonl:{tmp_path}/a/*.jsonl", tmp_path / "sa"),
                             progress=False)
  corpus.prepare_from_config(
      corpus_config(f"jsonl:{tmp_path}/b/*.jsonl", tmp_path / "sb", str(tmp_path / "sa" / "tokenizer")),
      progress=False)
  folders = corpus.parse_mixture(f"3:{tmp_path}/sa, 1:{tmp_path}/sb")
  assert [w for _, w in folders] == [0.75, 0.25]
  shards = [token_shards.TokenShards(f) for f, _ in folders]
  # The weights are token shares: documents are drawn by weight / mean document length.
  mean_len = [s.num_tokens / s.num_documents for s in shards]
  assert mean_len[0] > 2 * mean_len[1]
  want = [0.75 / mean_len[0], 0.25 / mean_len[1]]
  assert corpus.document_weights(shards, [0.75, 0.25]) == pytest.approx(
      [w / sum(want) for w in want])
  # Rows of 512 hold every document whole: segment starts count documents.
  it = corpus.packed_train_loader(shards, [0.75, 0.25], 511, 4, seed=0, packing="first_fit")
  docs, tokens = {0: 0, 1: 0}, {0: 0, 1: 0}
  for _ in range(40):
    b = next(it)
    starts = (b["positions"] == 0) & (b["segment_ids"] > 0)
    for src in (0, 1):
      docs[src] += int((starts & (b["source"] == src)).sum())
      tokens[src] += int(((b["segment_ids"] > 0) & (b["source"] == src)).sum())
    # Every token of a document carries its folder.
    for seg, src in zip(b["segment_ids"], b["source"]):
      for s in set(seg.tolist()) - {0}:
        assert len(set(src[seg == s].tolist())) == 1
  doc_share = corpus.document_weights(shards, [0.75, 0.25])[0]
  assert abs(docs[0] / (docs[0] + docs[1]) - doc_share) < 0.03  # interleaved exactly
  assert abs(tokens[0] / (tokens[0] + tokens[1]) - 0.75) < 0.05  # the weights, in tokens
  for bad in ("0.7:/a", "x:/a,1:/b", "0:/a,1:/b"):
    with pytest.raises(UserError, match="data.mixture"):
      corpus.parse_mixture(bad)


def test_in_memory_tasks_read_a_source_and_its_held_out_source(tmp_path: Path) -> None:
  """Masked-LM pre-training (documents of line segments) and the sentence-level tasks (lines)
  read `data.source` / `data.eval_source` like the LM task does."""
  import ml_collections  # noqa: PLC0415

  from reparam_jax.data import lines, mlm_corpus  # noqa: PLC0415
  (tmp_path / "train.jsonl").write_text(
      json.dumps({"text": "First line.\nSecond line.\n\n"}) + "\n"
      + json.dumps({"text": "  \n"}) + "\n" + json.dumps({"text": "Alone."}) + "\n")
  (tmp_path / "val.txt").write_text("held out\n\nand more\n")
  data = ml_collections.ConfigDict(base_config.base_config().data.to_dict())
  data.source, data.eval_source = f"jsonl:{tmp_path}/train.jsonl", f"text:{tmp_path}/val.txt"
  assert mlm_corpus.load_documents(data) == {
      "train": [["First line.", "Second line."], ["Alone."]],
      "validation": [["held out", "and more"]]}
  assert lines.load_lines(data) == {"train": ["First line.", "Second line.", "Alone."],
                                    "validation": ["held out", "and more"]}
  data.eval_source = ""
  with pytest.raises(UserError, match="config.data.eval_source is empty"):
    lines.load_lines(data)


def test_documents_are_tokenized_in_batches_of_bounded_text():
  """A batch's encodings are held at once: at most 512 documents and about 1 M characters
  (a longer document alone), so peak memory does not depend on how documents line up."""
  from reparam_jax.data.token_shards import _batches  # noqa: PLC0415

  docs = ["a" * 300, "b" * 300, "c" * 1000, "d" * 10, "e" * 10, "f" * 10]
  assert [[len(d) for d in b] for b in _batches(iter(docs), size=2, chars=700)] == [
      [300, 300], [1000], [10, 10], [10]]
  assert [len(b) for b in _batches(iter(["x"] * 5), size=512, chars=2)] == [2, 2, 1]
