"""The incremental-learning protocol end to end on a tiny encoder (experiments/incremental.py).

A 1-layer encoder trained a few steps on SST-2 stands in for the pretrained
MiniLM (the "base"); then the four real stage configs (configs/incremental/)
run with tiny budgets from it.  The adapter arm must give task 1 the same
logits bit for bit after training task 2, on a bit-identical base; full
fine-tuning must not (its encoder moved).
"""

import os

import pytest

from reparam_jax import train
from reparam_jax.incremental import protocol, report, stages
from tests.helpers import REPO

BASE = {"model.num_layers": 1, "model.num_heads": 2, "model.embed_dim": 16, "model.mlp_dim": 32,
        "data.vocab_size": 300, "seq_len": 32, "model.max_len": 32, "init_from": ""}
# Every stage: a few steps, one sequence shape (each extra shape is another compile).
STAGE = {"num_steps": "4", "optimizer.warmup_steps": "1", "log_every": "2", "eval_every": "4",
         "checkpoint_every": "4", "seq_len": "32", "encoder.length_buckets": "()",
         "batch_size": "16"}


@pytest.mark.slow
def test_adapters_keep_task1_full_finetuning_does_not(tmp_path, raw_data_dir, tfds_dir):
  data = {"data.raw_dir": raw_data_dir, "data.tfds_dir": tfds_dir}
  base = str(tmp_path / "base")
  train.main([f"--config={os.path.join(REPO, 'configs', 'sst2', 'finetune.py')}",
              f"--workdir={base}"] + [f"--config.{k}={v}" for k, v in
                                      {**BASE, **STAGE, **data}.items()])
  arms = {arm: tuple(stages.Stage(s.name, os.path.join(REPO, s.config), s.init_from_stage)
                     for s in pair) for arm, pair in stages.ARMS.items()}
  root = str(tmp_path / "runs")
  results = protocol.run(root, {**STAGE, **data, "init_from": base}, arms)
  a, f = results["adapters"], results["full"]
  assert a["base_identical"] and a["base_leaves"] > 10
  assert a["task1_logits_identical"]
  assert a["task1_after_stage1"] == a["task1_after_stage2"]
  assert a["routed_same_predictions"] and a["routed_max_abs_diff"] < 1e-4
  assert not f["task1_logits_identical"]  # every weight trained on task 2
  # The scorer's accuracies are the trainer's own final evaluations.
  assert a["task1_after_stage1"] == pytest.approx(a["trainer_task1"], abs=1e-6)
  assert f["task2_after_stage2"] == pytest.approx(f["trainer_task2"], abs=1e-6)
  text = report.markdown(results, root, "cmd", "test box", arms)
  assert "| task 1 logits bit-identical before/after | True | False |" in text
  # Finished runs are read back, not retrained.
  again = protocol.run(root, {**STAGE, **data, "init_from": base}, arms)
  assert again["adapters"] == a
