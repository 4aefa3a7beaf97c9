"""The encoder pipeline through the real trainer: MLM → fine-tune (init_from) → distil."""

import json
import os

import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from tests.helpers import REPO

TINY = {"model.num_layers": 1, "model.num_heads": 2, "model.embed_dim": 16, "model.mlp_dim": 32,
        "data.vocab_size": 300, "batch_size": 16, "eval_batch_size": 128, "num_steps": 6,
        "log_every": 2, "eval_every": 6, "checkpoint_every": 6, "optimizer.warmup_steps": 2,
        # One sequence shape per stage: each extra shape is another compile.
        "seq_len": 32, "model.max_len": 32, "encoder.length_buckets": "()"}


def _args(config, workdir, raw, tfds, **extra):
  cfg = dict(TINY, **{"data.raw_dir": raw, "data.tfds_dir": tfds}, **extra)
  return [f"--config={os.path.join(REPO, 'configs', 'sst2', config)}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in cfg.items()]


@pytest.mark.slow
def test_pretrain_finetune_distill(tmp_path, raw_data_dir, tfds_dir, capsys):
  mlm, clf, dst = (str(tmp_path / n) for n in ("mlm", "clf", "dst"))
  train.main(_args("pretrain_mlm.py", mlm, raw_data_dir, tfds_dir))
  assert any("train/mlm_loss" in r for r in rundir.read_metrics(mlm))

  capsys.readouterr()
  final = train.main(_args("finetune.py", clf, raw_data_dir, tfds_dir, init_from=mlm))
  out = capsys.readouterr().out
  assert "from the checkpoint: block_0, embed; freshly initialised: classifier" in out
  with open(os.path.join(mlm, "tokenizer.model"), "rb") as a, \
       open(os.path.join(clf, "tokenizer.model"), "rb") as b:
    assert a.read() == b.read()  # fine-tuning reuses the pre-training vocabulary
  report = open(os.path.join(clf, "report.txt")).read()
  assert "negative" in report and "macro avg" in report
  assert os.path.getsize(os.path.join(clf, "confusion_matrix.png")) > 1000
  cm_total = [float(line.split()[-1]) for line in report.splitlines() if "accuracy" in line]
  assert cm_total == [872.0]  # every dev sentence counted once
  # The logged accuracy is the confusion matrix's (the report's own count over 872).
  report_acc = [float(line.split()[-2]) for line in report.splitlines() if "accuracy" in line]
  assert report_acc == [pytest.approx(final["eval/accuracy"], abs=1e-4)]
  # The per-example outcomes (paired tests between rows resample them): one per dev
  # sentence, in order, and their mean is the logged accuracy exactly.
  examples = rundir.read_eval_examples(clf)
  assert examples["correct"].shape == examples["loss"].shape == (872,)
  assert examples["correct"].mean() == pytest.approx(final["eval/accuracy"], abs=1e-9)
  assert examples["loss"].mean() == pytest.approx(final["eval/loss"], rel=1e-5)
  assert "eval/f1_macro" in final

  # The fine-tuned embedding started from the MLM one (and moved only a few steps).
  emb0 = np.asarray(checkpoint.load_params(mlm)["embed"]["token"]["embedding"])
  emb1 = np.asarray(checkpoint.load_params(clf)["embed"]["token"]["embedding"])
  assert np.abs(emb1 - emb0).max() < 0.05

  final = train.main(_args("distill.py", dst, raw_data_dir, tfds_dir, **{
      "distill.teacher": clf, "model.embed_dim": 8, "distill.gamma": 0.1,
      "distill.hidden_weight": 1.0}))
  records = rundir.read_metrics(dst)
  keys = set().union(*records)
  assert {"train/task_loss", "train/kd_loss", "train/contrastive_loss",
          "train/hidden_loss"} <= keys
  with open(os.path.join(dst, "done.json")) as f:
    done = json.load(f)
  assert done["eval/teacher_accuracy"] == pytest.approx(
      json.load(open(os.path.join(clf, "done.json")))["eval/accuracy"])
  student = checkpoint.load_params(dst)
  assert "distill_proj" in student and "teacher" not in student  # teacher is not a param
