"""The compress recipe's stored forms beyond one dense kernel: GPTQ and RTN on the factors
of `svd` (each factor packed, `lowrank|packed`), 2:4-pruned kernels stored `sparse24`, and
W8A8 without SmoothQuant's migration (s = 1)."""

import jax
import numpy as np
import pytest

from reparam_jax.compression import calibration
from tests.compression.test_calibration import _output_error, trained  # noqa: F401 (fixture)

CALIB = "calibration(n=16, length=16, chunk=8)"


def _compress(trained, recipe_text, out):  # noqa: F811
  from reparam_jax.compression import recipe
  return recipe.compress(trained, recipe_text, str(out), log=lambda *_: None)


def _reloaded_loss(trained, out):  # noqa: F811
  from reparam_jax.rundir.workdir import load_run
  from reparam_jax.training.evaluate import Evaluator
  run = load_run(str(out))
  return run, Evaluator(run.config, trained)(run.params, run.config.reparam.rules)["loss"]


def test_gptq_and_rtn_quantize_the_factors_of_svd(trained, tmp_path):  # noqa: F811
  recipes = {"svd": "svd(rank=8)", "rtn": "svd(rank=8),rtn(bits=4, group=16)",
             "gptq": f"{CALIB},svd(rank=8),gptq(bits=4, group=16)"}
  reports = {k: _compress(trained, r, tmp_path / k) for k, r in recipes.items()}
  for name in ("rtn", "gptq"):
    run, loss = _reloaded_loss(trained, tmp_path / name)
    assert run.config.reparam.rules[0][1] == "lowrank(rank=8)|packed(bits=4, group=16, sym=False)"
    factors = run.params["block_0"]["mlp"]["fc_in"]["kernel"]
    assert factors["u"]["codes"].dtype == np.uint8 and factors["u"]["codes"].shape == (8, 8)
    assert factors["v"]["codes"].shape == (16, 8)  # v is [d_out=32, r]: 2 codes a byte
    assert loss == pytest.approx(reports[name]["final"]["eval_loss"], rel=1e-6)
    # 4-bit codes and a float32 scale and 8-bit zero per 16 entries: 6.5 of the factors' 32 bits
    bits = [reports[k]["rows"][-1]["kernel_bits"] for k in ("svd", name)]
    assert bits[1] == pytest.approx(bits[0] * (4 + 40 / 16) / 32), bits
  err = dict(zip(recipes, _output_error(trained, [str(tmp_path / k) for k in recipes],
                                        calibration.Calibration(n=16, length=16, chunk=8))))
  # The low-rank model's own error is common to all three; quantizing adds to it, GPTQ less.
  assert err["svd"] < err["gptq"] < err["rtn"], err


def test_two_of_four_pruning_is_stored_compressed(trained, tmp_path):  # noqa: F811
  recipes = {"unstructured": "prune(magnitude, 0.5)",
             "magnitude": "prune(magnitude, 0.5, pattern='2:4')",
             "sparsegpt": f"{CALIB},sparsegpt('2:4')", "wanda": f"{CALIB},wanda('2:4')"}
  reports = {k: _compress(trained, r, tmp_path / k) for k, r in recipes.items()}
  dense_bytes = reports["unstructured"]["rows"][-1]["stored_bytes"]
  assert load_rules(tmp_path / "unstructured") == ()  # zeros stored densely
  for name in ("magnitude", "sparsegpt", "wanda"):
    run, loss = _reloaded_loss(trained, tmp_path / name)
    assert run.config.reparam.rules[0][1] == "sparse24", name
    kernel = run.params["block_0"]["mlp"]["fc_out"]["kernel"]  # [32, 16]: 16 values per column
    assert kernel["values"].shape == (16, 16) and kernel["index"].dtype == np.uint8
    assert loss == pytest.approx(reports[name]["final"]["eval_loss"], rel=1e-6), name
    assert reports[name]["rows"][-1]["stored_bytes"] < 0.8 * dense_bytes, name
    assert reports[name]["rows"][-1]["kernel_bits"] == 17.0, name


def load_rules(out):
  from reparam_jax.rundir.workdir import load_run
  return tuple(tuple(r) for r in load_run(str(out)).config.reparam.rules)


def test_w8a8_without_migration_keeps_s_at_one(trained, tmp_path):  # noqa: F811
  report = _compress(trained, f"{CALIB},smoothquant(migrate=False)", tmp_path / "w8a8")
  run, loss = _reloaded_loss(trained, tmp_path / "w8a8")
  assert run.config.reparam.rules[0][1] == "quant(bits=8, act_bits=8)|smooth"
  scales = [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(run.params)
            if "smooth_s" in jax.tree_util.keystr(p)]
  assert scales and all((s == 1).all() for s in scales)
  assert loss == pytest.approx(report["final"]["eval_loss"], rel=1e-6)
