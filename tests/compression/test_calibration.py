"""Block-by-block calibration (compression/calibration.py) on tiny decoders: each layer's
statistics are those of its input in the full model whose earlier blocks are already
compressed, for GPT-2- and Llama-style blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.compression import calibration
from reparam_jax.reparam.state import get_in
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.transformer import Transformer

STYLES = {
    "gpt2": dict(),
    "llama": dict(rope=True, norm="rms", mlp_gated=True, activation="silu", use_bias=False,
                  num_kv_heads=1, tie_embeddings=False),
}


def tiny(style):
  cfg = TransformerConfig(vocab_size=32, num_layers=3, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=12, **STYLES[style])
  model = Transformer(cfg)
  ids = np.random.default_rng(0).integers(0, 32, (6, 12)).astype(np.int32)
  params = model.init(jax.random.key(0), ids[:1])["params"]
  return model, nn.meta.unbox(params), ids


def dense_inputs(model, params, ids):
  """{module path: its input} of every Dense of the full model."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, calibration.Dense) and context.method_name == "__call__":
      seen["/".join(context.module.path)] = args[0].reshape(-1, args[0].shape[-1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({"params": params}, ids)
  return {k: np.asarray(v, np.float64) for k, v in seen.items()}


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_each_layer_sees_its_input_with_earlier_blocks_compressed(style):
  model, params, ids = tiny(style)
  seen_stats = {}

  def halve(path, w, stats):  # a "compression" whose effect on later inputs is visible
    seen_stats[path] = stats
    return w * 0.5

  selected = lambda p: "block_" in p  # noqa: E731
  new = calibration.compress_blockwise(
      model, params, {"ids_BxL": ids}, selected, halve,
      calibration.Calibration(n=6, length=12, chunk=4, samples=20), log=lambda *_: None)
  kernels = [p for p in seen_stats]
  expected_layers = {"attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc_in",
                     "mlp/fc_out"} | ({"mlp/fc_gate"} if style == "llama" else set())
  assert {p.split("/", 1)[1].rsplit("/", 1)[0] for p in kernels} == expected_layers
  assert len(kernels) == 3 * len(expected_layers)
  # The full model with the compressed weights: block i's layers read what block i
  # computes from the compressed blocks before it, and block i's own weights as they were.
  for i in range(3):
    mixed = {k: (new[k] if k < f"block_{i}" and k.startswith("block_") else v)
             for k, v in params.items()}
    inputs = dense_inputs(model, mixed, ids)
    for path in kernels:
      if not path.startswith(f"block_{i}/"):
        continue
      x = inputs[path.removesuffix("/kernel")]
      stats = seen_stats[path]
      np.testing.assert_allclose(stats.hessian_IxI, x.T @ x, rtol=2e-4, atol=1e-3)
      np.testing.assert_allclose(stats.abs_max_I, np.abs(x).max(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(stats.abs_mean_I, np.abs(x).mean(0), rtol=1e-4, atol=1e-6)
      assert stats.count == ids.size
      assert 0 < len(stats.samples_MxI) <= 20 + 2
      nearest = np.abs(stats.samples_MxI[:, None, :] - x[None]).max(-1).min(1)
      assert nearest.max() < 1e-4  # each sample is one of the layer's input rows
  # Only the block kernels changed, each halved.
  flat_old = dict(jax.tree_util.tree_leaves_with_path(params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(new):
    name = jax.tree_util.keystr(path)
    factor = 0.5 if "block_" in name and "kernel" in name else 1.0
    np.testing.assert_allclose(leaf, factor * flat_old[path], rtol=1e-6)


# ---------------------------------------------------------------------------
# The compress recipe steps on the quick-start LM trained a few steps.


@pytest.fixture(scope="module")
def trained(tmp_path_factory, raw_data_dir, tfds_dir):
  from reparam_jax import train
  from tests.helpers import tiny_args
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=30, eval_every=30,
                       checkpoint_every=30))
  return workdir


def _output_error(trained, compressed_dirs, calib):
  """Σ over the block kernels of ‖X (W − Ŵ)‖² on the calibration inputs of the trained
  model, for each compressed run: how far each method's layers are from the original's."""
  from reparam_jax.compression import recipe
  from reparam_jax.reparam import Reparam
  from reparam_jax.rundir.workdir import load_run
  from reparam_jax.tasks.lm import LanguageModelTask
  run = load_run(trained)
  params = nn.meta.unbox(run.params)
  task = LanguageModelTask(run.config, trained)
  model = task.model()
  inputs = calibration.calibration_inputs(run.config, trained, calib, model.cfg.max_len)
  hessians = {}

  def keep(path, w, stats):
    hessians[path] = stats.hessian_IxI
    return w
  pattern = recipe.re.compile(recipe.KERNELS)
  calibration.compress_blockwise(model, params, inputs,
                                 lambda p: bool(pattern.fullmatch(p + "/kernel")), keep, calib,
                                 log=lambda *_: None)
  errors = []
  for out in compressed_dirs:
    stored = load_run(out)
    new = Reparam.from_config(stored.config.reparam).to_dense(nn.meta.unbox(stored.params))
    total = 0.0
    for path, h in hessians.items():
      keys = tuple(path.split("/"))
      diff = np.asarray(get_in(params, keys), np.float64) - np.asarray(
          get_in(new, keys), np.float64)
      total += float(np.trace(diff.T @ h @ diff))
    errors.append(total)
  return errors


def test_gptq_and_sparsegpt_steps_beat_their_baselines(trained, tmp_path):
  from reparam_jax.compression import recipe
  from reparam_jax.rundir.workdir import load_run
  from reparam_jax.training.evaluate import Evaluator
  calib = "calibration(n=16, length=16, chunk=8)"
  recipes = {"rtn": "rtn(bits=3, group=16)", "gptq": f"{calib},gptq(bits=3, group=16)",
             "magnitude": "prune(magnitude, 0.5)", "sparsegpt": f"{calib},sparsegpt(0.5)",
             "wanda": f"{calib},wanda('2:4')", "awq": f"{calib},awq(bits=3, group=16)",
             "smoothquant": f"{calib},smoothquant(0.5)"}
  reports = {k: recipe.compress(trained, r, str(tmp_path / k), log=lambda *_: None)
             for k, r in recipes.items()}
  for name, report in reports.items():
    final = report["rows"][-1]
    assert np.isfinite(final["eval_perplexity"]), name
    assert final["eval_loss"] < reports["rtn"]["rows"][0]["eval_loss"] + 0.1, name
  assert reports["gptq"]["rows"][-1]["step"] == "gptq(bits=3, group=16)"
  assert reports["gptq"]["rows"][-1]["kernel_bits"] == pytest.approx(3 + 40 / 16)
  for name in ("sparsegpt", "wanda"):
    assert reports[name]["rows"][-1]["kernel_sparsity"] == pytest.approx(0.5, abs=1e-6)
  # AWQ's layers also scale their input: the grid of diag(s)·w packed under `smooth`;
  # SmoothQuant's run W8A8, quantizing x / s per token at run time.
  assert reports["awq"]["rows"][-1]["kernel_bits"] == pytest.approx(3 + 40 / 16)
  for name, rule in (("awq", "packed(bits=3, group=16, sym=False)|smooth"),
                     ("smoothquant", "quant(bits=8, act_bits=8)|smooth")):
    run = load_run(str(tmp_path / name))
    assert run.config.reparam.rules[0][1] == rule, name
    assert run.params["block_0"]["mlp"]["fc_out"]["kernel"]["smooth_s"].shape == (32,)
    scales = [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(run.params)
              if "smooth_s" in jax.tree_util.keystr(p)]
    assert any(np.ptp(s) > 0 for s in scales), name  # some layer's channels were rescaled
    got = Evaluator(run.config, trained)(run.params, run.config.reparam.rules)
    assert got["loss"] == pytest.approx(reports[name]["final"]["eval_loss"], rel=1e-6), name
  assert load_run(str(tmp_path / "awq")).params["block_0"]["mlp"]["fc_out"]["kernel"][
      "base"]["codes"].dtype == np.uint8
  # GPTQ's and RTN's kernels are stored packed: 3-bit codes, 8 rows in 3 bytes.
  for name in ("gptq", "rtn"):
    run = load_run(str(tmp_path / name))
    assert run.config.reparam.rules[0][1] == "packed(bits=3, group=16, sym=False)"
    kernel = run.params["block_0"]["mlp"]["fc_out"]["kernel"]
    assert kernel["codes"].dtype == np.uint8 and kernel["codes"].shape == (32 * 3 // 8, 16)
    # The arrays' bytes (on disk, this tiny model's are outweighed by per-array metadata).
    assert reports[name]["rows"][-1]["stored_bytes"] < 0.6 * reports[name]["rows"][0]["stored_bytes"]
    got = Evaluator(run.config, trained)(run.params, run.config.reparam.rules)
    assert got["loss"] == pytest.approx(reports[name]["final"]["eval_loss"], rel=1e-6)
  # The papers' direction, on the layers' outputs: this briefly trained model's eval loss
  # barely moves under any of them (differences of 1e-4), so the loss would be a coin toss.
  err = dict(zip(recipes, _output_error(
      trained, [str(tmp_path / k) for k in recipes],
      calibration.Calibration(n=16, length=16, chunk=8))))
  assert err["gptq"] < err["rtn"], err
  assert err["sparsegpt"] < err["magnitude"], err


def test_refused_combinations_are_one_line_errors(trained, tmp_path):
  from reparam_jax.compression import recipe
  from reparam_jax.errors import UserError
  cases = {"svd(rank=4),awq(bits=4, group=16)": "only gptq and rtn quantize low-rank factors",
           "svd(rank=4),gptq(bits=4, act_order=True)": "without act_order",
           "quantize(int8),sparsegpt(0.5)": "put sparsegpt before quantize",
           "prune(magnitude, 0.5),gptq(bits=4, group=16)": "fill the pruned entries",
           "rtn(bits=4, group=16),prune(magnitude, 0.5)": "already lie on rtn's grid",
           "gptq(bitz=4)": "unknown option 'bitz'",
           "calibration(size=3),gptq(4)": "unknown option 'size'"}
  for text, message in cases.items():
    with pytest.raises(UserError, match=message):
      recipe.compress(trained, text, str(tmp_path / "out"), log=lambda *_: None)
  steps = recipe.parse_recipe("calibration(n=8),gptq(3, group=64),sparsegpt('2:4'),wanda(0.5)")
  assert [s.name for s in steps] == ["calibration", "gptq", "sparsegpt", "wanda"]
