"""The compression pipeline on a tiny trained run: smaller int8 checkpoint, reproducible metric."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.compression import recipe
from reparam_jax.errors import UserError
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.workdir import load_run
from reparam_jax.training.evaluate import Evaluator
from tests.helpers import tiny_args


def test_recipe_parsing():
  steps = recipe.parse_recipe("svd(rank=32),prune(magnitude,0.5, scope='global'),quantize(int8)")
  assert [s.name for s in steps] == ["svd", "prune", "quantize"]
  assert steps[1].args == ("magnitude", 0.5) and steps[1].kwargs == {"scope": "global"}
  assert steps[2].args == ("int8",)
  with pytest.raises(UserError, match="unknown recipe step"):
    recipe.parse_recipe("distill(x=1)")
  with pytest.raises(UserError, match="cannot parse"):
    recipe.parse_recipe("svd(rank=")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=10, eval_every=10,
                       checkpoint_every=10))
  return workdir


@pytest.mark.slow
def test_int8_pipeline_is_smaller_on_disk_and_restores_to_the_reported_metric(trained, tmp_path):
  out = str(tmp_path / "out")
  report = recipe.compress(trained, "prune(magnitude,0.5),quantize(int8)", out)
  rows = report["rows"]
  assert [r["step"] for r in rows] == ["original", "prune(magnitude, 0.5)", "quantize(int8)"]
  assert rows[1]["kernel_sparsity"] == pytest.approx(0.5, abs=1e-3)
  assert rows[2]["bytes_on_disk"] < rows[0]["bytes_on_disk"]
  assert report["final"]["bytes_on_disk"] < rows[0]["bytes_on_disk"]
  assert rows[2]["kernel_bits"] <= 8 + 32 / 16  # int8 values + f32 scales per column (d_in ≥ 16)
  # The saved checkpoint really holds int8 and evaluates to the reported metric.
  run = load_run(out)
  q = run.params["block_0"]["mlp"]["fc_in"]["kernel"]["q"]
  assert q.dtype == np.int8 and (np.asarray(q) == 0).mean() >= 0.5
  got = Evaluator(run.config, trained)(run.params, run.config.reparam.rules)
  assert got["loss"] == pytest.approx(report["final"]["eval_loss"], rel=1e-6)
  with open(os.path.join(out, "report.json")) as f:
    assert json.load(f)["final"]["eval_loss"] == report["final"]["eval_loss"]
  assert os.path.exists(os.path.join(out, "report.md"))


@pytest.mark.slow
def test_svd_sensitivity_and_finetune(trained, tmp_path):
  out = str(tmp_path / "out")
  report = recipe.compress(trained, "prune(sensitivity, 0.5, granularity=heads),svd(rank=4)",
                             out, finetune_steps=3)
  rows = report["rows"]
  assert rows[1]["kernel_sparsity"] > 0.1  # one of the two heads' q/k/v columns and out rows
  assert rows[-1]["step"].startswith("finetune")
  run = load_run(out)
  assert "u" in run.params["block_0"]["mlp"]["fc_in"]["kernel"]
  got = Evaluator(run.config, trained)(run.params, run.config.reparam.rules)
  assert got["loss"] == pytest.approx(report["final"]["eval_loss"], rel=1e-6)
  # Fine-tuning moved the compressed weights (the step before it is saved as steps/2_svd).
  before = jax.tree.leaves(checkpoint.load_params(os.path.join(out, "steps", "2_svd")))
  after = jax.tree.leaves(run.params)
  assert len(before) == len(after)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after))
