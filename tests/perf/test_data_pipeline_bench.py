"""bench/data_pipeline.py's measurements on a tiny corpus, in process (the bench itself runs
each in a fresh process pinned to one core)."""

from __future__ import annotations

import json
import os

from bench import data_pipeline as bench


def test_each_measurement_on_a_tiny_corpus(tmp_path) -> None:
  corpus = str(tmp_path / "corpus")
  made = bench.make_corpus(corpus, 300_000)
  assert made["text_bytes"] >= 300_000 and made["files"] == 1
  with open(os.path.join(corpus, "part-00000.jsonl")) as f:
    lengths = [len(json.loads(line)["text"]) for line in f]
  assert len(lengths) == made["documents"] and min(lengths) < 1024 < max(lengths)  # mixed
  assert bench.make_corpus(corpus, 300_000) == made  # kept, not rewritten

  tok = bench.train_bpe(corpus, str(tmp_path / "bpe"), sample_bytes=100_000)
  ours = bench.measure_prepare(corpus, tok, str(tmp_path / "shards"))
  peer = bench.measure_tokenizer_peer(corpus, tok)
  # The same documents and tokens: the peer counts the <|endoftext|> after each too.
  assert (ours["documents"], ours["tokens"]) == (peer["documents"], peer["tokens"])
  assert ours["tokens_s"] > 0 and ours["peak_rss_mib"] > 0

  for packing in ("concat", "first_fit"):
    loader = bench.measure_loader(str(tmp_path / "shards"), packing, 64, 4, 5)
    assert loader["batches"] == 5 and loader["tokens_s"] > 0
    assert loader["non_padding"] == 1.0 if packing == "concat" else 0.5 < loader["non_padding"] <= 1
  loss = bench.packing_loss(str(tmp_path / "shards"), 256, 40)
  assert 0.5 < loss["first_fit_non_padding"] <= 1.0
  assert 0 < loss["first_fit_documents_split"] < loss["concat_documents_split"] < 1
