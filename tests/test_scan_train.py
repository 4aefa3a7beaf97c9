"""The trainer with `model.scan_layers` and `model.remat`, end to end on a tiny LM.

A scanned LoRA run starts from an unrolled dense run's checkpoint (the
layout is converted on load), on 8 devices with FSDP; with a negligible learning
rate it must evaluate exactly as the dense run it started from.  Tools read
a scanned run unrolled.
"""

import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.generation.decode import Sampling
from reparam_jax.generation.text import sample_run
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from tests.helpers import tiny_args

# Two layers make a stack; the deeper run structures are tests/reparam/test_per_layer.py's.
LAYERS = {"model.num_layers": "2"}


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = str(tmp_path_factory.mktemp("dense"))
  final = train.main(tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=5, **LAYERS))
  return workdir, final


@pytest.mark.heavy
def test_a_scanned_lora_run_starts_from_an_unrolled_checkpoint(dense_run, tmp_path, raw_data_dir,
                                                               tfds_dir):
  dense_dir, dense_final = dense_run
  workdir = str(tmp_path / "scanned")
  args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=5, init_from=dense_dir,
                   model__scan_layers="True", model__remat="full", optimizer__lr="1e-30",
                   optimizer__end_lr="1e-30", mesh__data="2", mesh__fsdp="4", **LAYERS)
  args.append(r"--config.reparam.rules=(('block_\\d+/attn/(query|value)/kernel', "
              r"'lora(rank=2)'), ('.*', 'frozen'))")
  final = train.main(args)
  params = checkpoint.load_params(workdir)
  assert "blocks" in params and "block_0" not in params
  assert np.shape(params["blocks"]["attn"]["query"]["kernel"]["lora_a"])[0] == 2
  # LoRA's B = 0 and nothing trains: the model is the dense run's, layer for layer.
  assert final["eval/loss"] == pytest.approx(dense_final["eval/loss"], rel=1e-5)

  run = rundir.load_run(workdir)
  assert "block_1" in run.params and "blocks" not in run.params
  assert run.config.model.scan_layers is False
  text = sample_run(workdir, ["ROMEO:"], 8, Sampling(temperature=0.0))
  dense_text = sample_run(dense_dir, ["ROMEO:"], 8, Sampling(temperature=0.0))
  assert text == dense_text


# A rule on one layer: the scanned model scans runs [0] and [1] (tests/reparam/test_per_layer.py).
ONE_LAYER = r"--config.reparam.rules=(('block_1/mlp/fc_in/kernel', 'lowrank(rank=4)'),)"


# Dense: the one-run scan of the trainer is the LoRA test's above, the equivalence of the
# scanned and unrolled model tests/models/test_scan_layers.py's; `make test-all` runs it.
@pytest.mark.heavy
@pytest.mark.parametrize("rules", [pytest.param(None, marks=pytest.mark.slow), ONE_LAYER],
                         ids=["dense", "one_layer_lowrank"])
def test_scanned_and_unrolled_runs_train_alike(dense_run, tmp_path, raw_data_dir, tfds_dir,
                                               rules):
  """Both start from the dense run's weights: the same losses, step by step."""
  dense_dir, _ = dense_run
  losses = {}
  for scan in ("False", "True"):
    workdir = str(tmp_path / f"scan_{scan}")
    args = tiny_args(workdir, raw_data_dir, tfds_dir, num_steps=4, init_from=dense_dir,
                     model__scan_layers=scan, model__remat="full" if scan == "True" else "none",
                     **LAYERS)
    train.main(args + ([rules] if rules else []))
    losses[scan] = [r["train/loss"] for r in rundir.read_metrics(workdir) if "train/loss" in r]
    if rules and scan == "True":
      params = checkpoint.load_params(workdir)
      assert {k for k in params if k.startswith("block")} == {"blocks_0", "blocks_1"}
      assert "u" in params["blocks_1"]["mlp"]["fc_in"]["kernel"]
      assert rundir.load_run(workdir).params.keys() >= {"block_0", "block_1"}
  np.testing.assert_allclose(losses["True"], losses["False"], rtol=2e-5)
