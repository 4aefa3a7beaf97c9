"""T5 span-corruption pre-training through the real trainer, its metrics, and `sample`."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax import sample, train
from reparam_jax.data.tokenizers import CharTokenizer
from reparam_jax.errors import UserError
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.tasks.seq2seq import EOS, Seq2SeqTask, Vocabulary
from tests.helpers import REPO

TINY = {"model.num_layers": 1, "model.num_decoder_layers": 1, "model.num_heads": 2,
        "model.embed_dim": 16, "model.mlp_dim": 32, "seq_len": 32, "batch_size": 8,
        "eval_batch_size": 512, "num_steps": 30, "log_every": 5, "eval_every": 30,
        "checkpoint_every": 30, "optimizer.warmup_steps": 2, "optimizer.lr": 1e-2, "seq2seq.num_sentinels": 8,
        "model.relative_buckets": 8, "model.relative_max_distance": 16, "perf.cpu_devices": 0}


def _args(config: str, workdir: str, raw: str, tfds: str, **extra) -> list[str]:
  cfg = dict(TINY, **{"data.raw_dir": raw, "data.tfds_dir": tfds}, **extra)
  return [f"--config={os.path.join(REPO, 'configs', 'seq2seq', config)}",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in cfg.items()]


def test_vocabulary_round_trips_text_and_sentinels():
  vocab = Vocabulary(CharTokenizer("abc "), num_sentinels=3)
  ids = vocab.encode("ab <extra_id_0>c<extra_id_2>")
  assert ids == [2, 3, 5, vocab.sentinel(0), 4, vocab.sentinel(2)]
  assert vocab.size == 4 + 2 + 3 and vocab.sentinel(2) == vocab.size - 1
  assert vocab.decode(ids + [EOS, 2]) == "ab <extra_id_0>c<extra_id_2>"  # stops at EOS
  with pytest.raises(UserError, match="has 3 sentinels"):
    vocab.encode("a<extra_id_3>")


def test_span_accuracy_counts_a_span_right_only_if_all_its_tokens_are():
  class Config:  # what eval_sums reads
    class seq2seq:  # noqa: N801
      num_sentinels = 4
  task = Seq2SeqTask.__new__(Seq2SeqTask)
  task.config = Config
  targets = jnp.asarray([[7, 3, 4, 8, 5, EOS, 0]])
  spans = jnp.asarray([[1, 1, 1, 2, 2, 0, 0]])
  predicted = targets.at[0, 4].set(6)  # one token of span 2 wrong
  batch = {"inputs": None, "decoder_inputs": None, "inputs_mask": None, "targets": targets,
           "target_weights": jnp.asarray([[1, 1, 1, 1, 1, 1, 0]], jnp.float32),
           "target_spans": spans}
  logits = 10.0 * jnp.eye(10)[predicted]
  sums = task.eval_sums(lambda *a, **k: {"logits": logits}, batch)
  metrics = Seq2SeqTask.eval_metrics({k: float(v) for k, v in sums.items()})
  assert metrics["span_accuracy"] == 0.5 and metrics["accuracy"] == pytest.approx(5 / 6)


@pytest.mark.heavy
def test_span_corruption_trains_lowrank_cross_attention_and_samples(
    tmp_path, raw_data_dir, tfds_dir, capsys):
  workdir = str(tmp_path / "s2s")
  final = train.main(_args("span_corruption_lowrank.py", workdir, raw_data_dir, tfds_dir,
                           **{"reparam.rank": 4}))
  losses = [r["train/loss"] for r in rundir.read_metrics(workdir) if "train/loss" in r]
  assert losses[-1] < losses[0] - 0.5, losses
  assert {"eval/loss", "eval/accuracy", "eval/span_accuracy"} <= set(final)
  assert 0.0 <= final["eval/span_accuracy"] <= final["eval/accuracy"] <= 1.0
  params = checkpoint.load_params(workdir)
  # The rule reached the cross-attention of the decoder by path: factors, no dense kernel.
  query = params["decoder"]["block_0"]["cross_attn"]["query"]["kernel"]
  assert isinstance(query, dict) and {np.shape(v)[-1] for v in query.values()} == {4}, query

  capsys.readouterr()
  texts = sample.main([f"--workdir={workdir}", "--prompt=ROMEO: <extra_id_0> thee",
                       "--num_tokens=6", "--beams=3"])
  assert len(texts) == 1 and len(texts[0]) > 0
  with pytest.raises(SystemExit) as e:
    sample.main([f"--workdir={workdir}", "--prompt=x<extra_id_9>", "--num_tokens=4"])
  assert e.value.code == 2
  assert "has 8 sentinels" in capsys.readouterr().err


@pytest.mark.heavy
def test_a_jsonl_corpus_trains_packed_first_fit_and_evaluates_on_its_held_out_source(
    tmp_path, raw_data_dir, tfds_dir):
  """`data.source` documents, each cut into raw windows, corrupted alone and packed with
  segment ids (data.packing="first_fit"); evaluated on `data.eval_source`'s documents.
  Then the two folders that run tokenized, as a `data.mixture`: each folder's share logged."""
  import json  # noqa: PLC0415

  lines = open(os.path.join(raw_data_dir, "tinyshakespeare", "input.txt"),
               encoding="utf-8").read().split("\n\n")[:400]
  for name, part in (("train", lines[:360]), ("val", lines[360:])):
    with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"text": t}) + "\n" for t in part)
  workdir = str(tmp_path / "run")
  final = train.main(_args("span_corruption.py", workdir, raw_data_dir, tfds_dir, **{
      "data.source": f"jsonl:{tmp_path}/train.jsonl", "data.eval_source":
      f"jsonl:{tmp_path}/val.jsonl", "data.packing": "first_fit", "num_steps": 20,
      "eval_every": 10, "checkpoint_every": 20}))
  records = rundir.read_metrics(workdir)
  evals = [r["eval/loss"] for r in records if "eval/loss" in r]
  assert len(evals) == 2 and evals[1] < evals[0], evals
  assert 0.0 <= final["eval/span_accuracy"] <= 1.0
  assert os.path.isdir(os.path.join(workdir, "corpus", "train"))
  # The tokenizer of the shards is the run's: sample encodes and decodes with it.
  (text,) = sample.main([f"--workdir={workdir}", "--prompt=ROMEO: <extra_id_0> thee",
                         "--num_tokens=4"])
  assert isinstance(text, str)

  # The two folders that run prepared, as a 3:1 mixture of prepared folders.
  folders = os.path.join(workdir, "corpus")
  mixed = str(tmp_path / "mixed")
  train.main(_args("span_corruption.py", mixed, raw_data_dir, tfds_dir, **{
      "data.mixture": f"3:{folders}/train,1:{folders}/eval", "data.eval_prepared":
      f"{folders}/eval", "data.packing": "first_fit", "num_steps": 2, "eval_every": 2,
      "checkpoint_every": 2, "log_every": 1}))
  shares = [(r["train/mixture/0"], r["train/mixture/1"]) for r in rundir.read_metrics(mixed)
            if "train/mixture/0" in r]
  assert len(shares) == 2 and all(abs(a + b - 1) < 1e-5 and a > b for a, b in shares), shares
