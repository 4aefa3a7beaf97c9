"""Calibration on a device mesh and for classifier runs (compression/calibration.py):
GPTQ block by block on an 8-device data × fsdp × tensor mesh gives one device's grids,
with the kernels kept split and only one kernel at a time on the host; an encoder's
statistics leave its padding out; a classifier run compresses with gptq / sparsegpt
through the `compress` pipeline on its own mesh."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from reparam_jax.compression import calibration
from reparam_jax.compression.methods import gptq
from reparam_jax.config.base import DEFAULT_AXIS_RULES
from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.transformer import Transformer
from reparam_jax.reparam.state import get_in
from reparam_jax.training import sharding

QUIET = lambda *_: None  # noqa: E731


def _gptq(grids):
  def layer(path, w, stats):
    result = gptq.apply(w, stats, bits=4, group=8)
    grids[path] = result.grid
    return result.weight_IxO
  return layer


def test_gptq_on_a_mesh_gives_one_devices_grids_and_keeps_the_shardings(monkeypatch):
  assert jax.device_count() == 8  # conftest's simulated devices
  model = Transformer(TransformerConfig(vocab_size=32, num_layers=2, num_heads=2,
                                        embed_dim=16, mlp_dim=32, max_len=12))
  ids = np.random.default_rng(0).integers(0, 32, (8, 12)).astype(np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), ids[:1])["params"])
  calib = calibration.Calibration(n=8, length=12, chunk=4, samples=16)
  selected = lambda p: "block_" in p  # noqa: E731
  one_grids, mesh_grids = {}, {}
  on_one = calibration.compress_blockwise(model, params, {"ids_BxL": ids}, selected,
                                          _gptq(one_grids), calib, log=QUIET)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  gathered, stats_calls = [], []
  host_copy, stats_fn = calibration._host_copy, calibration._stats_fn

  def spy_host_copy(x):  # every weight that comes to the host
    gathered.append((x.shape, x.sharding))
    return host_copy(x)

  def spy_stats_fn(module, static, mesh):  # what each block's statistics pass is given
    fn, layout = stats_fn(module, static, mesh)

    def wrapped(block_params, arrays, sample_rows, mask):
      out = fn(block_params, arrays, sample_rows, mask)
      stats_calls.append((block_params, arrays, out))
      return out
    return wrapped, layout
  monkeypatch.setattr(calibration, "_host_copy", spy_host_copy)
  monkeypatch.setattr(calibration, "_stats_fn", spy_stats_fn)
  on_mesh = calibration.compress_blockwise(model, params, {"ids_BxL": ids}, selected,
                                           _gptq(mesh_grids), calib, log=QUIET, mesh=mesh,
                                           rules=DEFAULT_AXIS_RULES)

  # The same grids and weights as on one device (the Hessians differ by summation order).
  assert sorted(mesh_grids) == sorted(one_grids) and len(one_grids) == 12
  for path, grid in mesh_grids.items():
    np.testing.assert_array_equal(grid.codes, one_grids[path].codes, err_msg=path)
    np.testing.assert_allclose(grid.scales, one_grids[path].scales, rtol=1e-5, err_msg=path)
  for a, b in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(on_one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

  # Every parameter keeps the trainer's sharding on the mesh; the kernels are split 4 ways.
  expected = calibration.param_shardings(
      model, calibration.CalibrationSet.of({"ids_BxL": ids}), mesh,
      sharding.rules_tuple(DEFAULT_AXIS_RULES))
  for path, leaf in jax.tree_util.tree_leaves_with_path(on_mesh):
    want = get_in(expected, tuple(k.key for k in path))
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), jax.tree_util.keystr(path)
  kernel = on_mesh["block_1"]["mlp"]["fc_in"]["kernel"]
  assert len({s.index for s in kernel.addressable_shards}) == 4
  # Only the selected kernels came to the host, each once, from its split layout.
  assert len(gathered) == 12
  assert sorted(shape for shape, _ in gathered) == sorted(
      np.shape(get_in(params, tuple(p.split("/")))) for p in one_grids)
  assert not any(s.is_fully_replicated for _, s in gathered)
  # Each block's pass got its params split as trained and its activations split over the
  # batch axes (data × fsdp: 4 ways), and gave back its sums reduced (replicated).
  assert len(stats_calls) == 2 * 2  # blocks × chunks
  for i, (block_params, arrays, out) in enumerate(stats_calls):
    got = jax.tree.leaves(block_params)
    want = jax.tree.leaves(expected[f"block_{i // 2}"])
    assert all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(got, want))
    assert arrays[0].sharding.spec[0] == ("data", "fsdp")
    assert len({s.index for s in arrays[0].addressable_shards}) == 4
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(out))


def test_an_encoders_statistics_leave_its_padding_out():
  from reparam_jax.config.base import base_config
  from reparam_jax.tasks.encoder import encoder_defaults, encoder_model
  c = encoder_defaults(base_config())
  c.model.update(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)
  model = encoder_model(c.model, c.encoder, 40, 10, ("classifier",))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 40, (6, 10)).astype(np.int32)
  mask = np.arange(10)[None] < rng.integers(3, 11, (6, 1))  # real tokens first
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids[:1], mask[:1], None)[
      "params"])
  seen = {}

  def halve(path, w, stats):
    seen[path] = stats
    return w * 0.5
  inputs = calibration.CalibrationSet((ids, mask, None), {}, mask)
  new = calibration.compress_blockwise(
      model, params, inputs, lambda p: "block_" in p, halve,
      calibration.Calibration(n=6, length=10, chunk=4, samples=20), log=QUIET)
  assert len(seen) == 2 * 6  # the encoder's blocks: query, key, value, out, fc_in, fc_out
  # Block 1's layers read what block 0, halved, computes: the full model's inputs at the
  # real tokens (the padding positions' activations are not in the statistics).
  mixed = dict(params, block_0=new["block_0"])

  def block_inputs(params):
    x_of = {}

    def interceptor(next_fun, args, kwargs, context):
      path = "/".join(context.module.path)
      if (isinstance(context.module, calibration.Dense) and context.method_name == "__call__"
          and path.startswith("block_")):
        x_of[path] = args[0]
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(interceptor):
      model.apply({"params": params}, ids, mask, None)
    return x_of
  x_of = {k: np.asarray(v, np.float64)[mask] for k, v in jax.jit(block_inputs)(mixed).items()}
  for path, stats in seen.items():
    if path.startswith("block_1/"):
      x = x_of[path.removesuffix("/kernel")]
      np.testing.assert_allclose(stats.hessian_IxI, x.T @ x, rtol=2e-4, atol=1e-3)
      np.testing.assert_allclose(stats.abs_max_I, np.abs(x).max(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(stats.abs_mean_I, np.abs(x).mean(0), rtol=1e-4, atol=1e-6)
      assert stats.count == mask.sum()
      nearest = np.abs(stats.samples_MxI[:, None, :] - x[None]).max(-1).min(1)
      assert nearest.max() < 1e-4  # samples are real tokens' rows


# ---------------------------------------------------------------------------
# A classifier run through the compress pipeline, on the run's own mesh.


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  from reparam_jax import train
  from tests.compression.test_compress_config import TINY
  from tests.helpers import REPO, tiny_labelled_corpus
  data = tiny_labelled_corpus(str(tmp_path_factory.mktemp("labelled")))
  workdir = str(tmp_path_factory.mktemp("classifier"))
  cfg = dict(TINY, **data, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
                              "model.num_layers": 2, "num_steps": 8, "eval_every": 8,
                              "checkpoint_every": 8})
  train.main([f"--config={os.path.join(REPO, 'configs', 'sst2', 'encoder.py')}",
              f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in cfg.items()])
  return workdir


def test_a_classifier_compresses_with_gptq_and_sparsegpt(classifier, tmp_path):
  from reparam_jax import compress
  from reparam_jax.rundir.workdir import load_run
  # The calibration set is the encoder's inputs as the task gives them, padding marked.
  run = load_run(classifier)
  inputs = calibration.calibration_inputs(run.config, classifier,
                                          calibration.Calibration(n=16, length=32), 32)
  ids, padding_mask, token_types = inputs.args
  assert ids.shape == (16, 32) and token_types is None and not inputs.kwargs
  np.testing.assert_array_equal(inputs.token_mask_BxL, padding_mask)
  assert 0 < padding_mask.mean() < 1  # short sentences: padding to leave out
  calib = "calibration(n=16, length=32, chunk=8)"
  lines = []
  reports = {name: compress.compress(classifier, f"{calib},{step}", str(tmp_path / name),
                                     log=lambda *a: lines.append(" ".join(map(str, a))))
             for name, step in (("gptq", "gptq(4, group=16)"), ("sparsegpt", "sparsegpt(0.5)"))}
  # Calibrated on the run's mesh, block by block through the encoder.
  assert sum("mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in line for line in lines) == 2
  assert sum("calibrated block_1: 6 layers" in line for line in lines) == 2
  for name, report in reports.items():
    original, final = report["rows"][0], report["rows"][-1]
    assert 0 <= final["eval_accuracy"] <= 1 and "eval_accuracy" in original, name
    assert abs(final["eval_accuracy"] - original["eval_accuracy"]) < 0.2, name
  assert reports["sparsegpt"]["rows"][-1]["kernel_sparsity"] == pytest.approx(0.5, abs=1e-6)
  run = load_run(str(tmp_path / "gptq"))  # 4-bit codes packed two a byte, with group scales
  assert run.config.reparam.rules[0][1] == "packed(bits=4, group=16, sym=False)"
  kernel = run.params["block_0"]["mlp"]["fc_out"]["kernel"]
  assert kernel["codes"].dtype == np.uint8 and kernel["codes"].shape == (32 // 2, 16)
  pruned = load_run(str(tmp_path / "sparsegpt")).params
  for i in range(2):
    w = np.asarray(pruned[f"block_{i}"]["attn"]["query"]["kernel"])
    assert (w == 0).mean() == pytest.approx(0.5)
