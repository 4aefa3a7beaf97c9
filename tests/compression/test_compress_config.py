"""A config with `compress.recipe` compresses the run `init_from` names, through `train`.

This is how an ablation row (experiments/sst2_pretrained.py) or a sweep point
compresses a fine-tuned classifier: the output folder is a finished run
(done.json with the task's metrics and the stored bytes) like a training row's.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.rundir import workdir as rundir
from reparam_jax.rundir.workdir import load_run
from reparam_jax.training.evaluate import Evaluator
from tests.helpers import REPO, tiny_labelled_corpus

TINY = {"model.num_layers": 1, "model.num_heads": 2, "model.embed_dim": 16, "model.mlp_dim": 32,
        "data.vocab_size": 300, "batch_size": 16, "eval_batch_size": 128, "num_steps": 4,
        "log_every": 2, "eval_every": 4, "checkpoint_every": 4, "optimizer.warmup_steps": 2,
        "seq_len": 32, "model.max_len": 32, "encoder.length_buckets": "()"}
KERNELS = r"block_\d+/(attn|mlp)/\w+/kernel|embed/token/embedding"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
  """A small labelled set: the data does not matter here, the compress path does."""
  # Made-up words: a 300-piece vocabulary, so int8 storage of the embedding shows.
  return tiny_labelled_corpus(str(tmp_path_factory.mktemp("labelled")), made_up_words=600)


def _args(workdir, data, **extra):
  cfg = dict(TINY, **data, **extra)
  return [f"--config={os.path.join(REPO, 'configs', 'sst2', 'encoder.py')}",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in cfg.items()]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, data):
  workdir = str(tmp_path_factory.mktemp("classifier"))
  train.main(_args(workdir, data))
  return workdir


@pytest.mark.heavy
def test_int8_of_a_classifier_through_train(classifier, data, tmp_path):
  out = str(tmp_path / "int8")
  done = train.main(_args(out, data, init_from=classifier,
                          **{"compress.recipe": "quantize(int8)", "compress.kernels": KERNELS}))
  assert rundir.read_done(out) == done
  report = json.load(open(os.path.join(out, "report.json")))
  final = report["final"]
  # The classification metrics, not the LM ones, are reported and tabulated.
  assert done["eval/accuracy"] == final["eval_accuracy"]
  assert "accuracy" in open(os.path.join(out, "report.md")).read()
  # Stored bytes: int8 values + f32 scales (width-16 columns here: 8.6 bits a weight) and the
  # float biases and norms, against the float original's 4 bytes a weight.
  original = report["rows"][0]
  assert 0.25 < done["params/bytes"] / original["stored_bytes"] < 0.4
  assert done["params/disk_bytes"] == final["bytes_on_disk"]
  assert done["compress/original_disk_bytes"] == original["bytes_on_disk"]
  assert done["params/trainable"] == 0  # post-training: nothing trained
  run = load_run(out)
  assert np.asarray(run.params["embed"]["token"]["embedding"]["q"]).dtype == np.int8
  got = Evaluator(run.config, classifier)(run.params, run.config.reparam.rules)
  assert got["accuracy"] == pytest.approx(done["eval/accuracy"])


def test_a_compress_config_needs_a_trained_run(data, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(_args(str(tmp_path / "x"), data,
                     **{"compress.recipe": "quantize(int8)"}))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "compress.recipe needs init_from" in err[0]


@pytest.mark.heavy
def test_pipeline_with_fine_tuning_from_a_run_whose_config_left_causal_unset(
    classifier, data, tmp_path):
  """Runs started from a Hugging Face folder up to 262dcdb wrote model.causal = null."""
  import shutil
  legacy = str(tmp_path / "legacy")
  shutil.copytree(classifier, legacy)
  with open(os.path.join(legacy, "config.json")) as f:
    config = json.load(f)
  config["model"]["causal"] = None
  with open(os.path.join(legacy, "config.json"), "w") as f:
    json.dump(config, f)
  out = str(tmp_path / "pipeline")
  done = train.main(_args(out, data, init_from=legacy, **{
      "compress.recipe": "prune(magnitude, 0.5), quantize(int8)",
      "compress.finetune_steps": 2}))
  assert done["compress/kernel_sparsity"] == pytest.approx(0.5, abs=0.01)
  assert done["params/trainable"] > 0  # the fine-tuning trained the float weights
  assert json.load(open(os.path.join(out, "report.json")))["rows"][-1]["step"].startswith(
      "finetune")
