"""bench/student_forward.py on a tiny teacher and its distilled student (CI-sized).

The runs read a small labelled JSON Lines set the test writes (the bench takes
whatever labelled data the runs were trained on); configs/sst2/distill.py's
SST-2 pipeline is the slow end-to-end test in tests/tasks/test_classify_end_to_end.py."""

from __future__ import annotations

import os

import pytest

from bench import student_forward
from reparam_jax import train
from reparam_jax.rundir import checkpoint
from tests.helpers import REPO, tiny_labelled_corpus

TINY = {"model.num_heads": 2, "model.embed_dim": 16, "model.mlp_dim": 32,
        "data.vocab_size": 60, "batch_size": 16, "eval_batch_size": 128, "num_steps": 2,
        "log_every": 1, "eval_every": 2, "checkpoint_every": 2, "optimizer.warmup_steps": 1,
        "seq_len": 32, "model.max_len": 32, "encoder.length_buckets": "()"}


def _args(config, workdir, data, **extra):
  cfg = dict(TINY, **data, **extra)
  return [f"--config={os.path.join(REPO, 'configs', 'sst2', config)}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in cfg.items()]


@pytest.mark.heavy
def test_teacher_and_distilled_student_forward(tmp_path):
  data = tiny_labelled_corpus(str(tmp_path))
  teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
  train.main(_args("encoder.py", teacher, data, **{"model.num_layers": 2}))
  train.main(_args("distill.py", student, data, **{
      "model.num_layers": 1, "model.embed_dim": 8, "distill.teacher": teacher,
      "distill.hidden_weight": 1.0}))
  # A narrower student learns a projection to the teacher's width for the hidden-state
  # loss: a training-only parameter the bench drops.
  assert "distill_proj" in checkpoint.load_params(student)

  out = student_forward.compare(teacher, student, rounds=2, batch_size=128)
  assert (out["teacher"]["layers"], out["student"]["layers"]) == (2, 1)
  # The 300 dev sentences in batches of 128, padded to seq_len.
  assert out["teacher"]["batches"] == out["student"]["batches"] == 3
  assert out["teacher"]["tokens_per_batch"] == 128 * 32
  assert out["student"]["params"] < out["teacher"]["params"]
  assert all(len(v) == 2 for v in out["dev_pass_s_all"].values())
  assert out["speedup"] == out["dev_pass_s"]["teacher"] / out["dev_pass_s"]["student"] > 0
