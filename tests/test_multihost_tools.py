"""The whole-checkpoint tools on several localhost processes (jax.distributed, gloo).

`convert`, adapter save/load and `export_hf` on a real pretrained model
(all-MiniLM-L6-v2), run by 2 processes of 2 CPU devices each: every array
stays split over the processes (each holds half of the checkpoint, never
all of it), and what they write equals what one process writes.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from reparam_jax import convert, convert_hf, export_hf
from reparam_jax.rundir import checkpoint
from tests.helpers import free_port, run_process_group

PROCESSES, DEVICES_EACH = 2, 2
LOWRANK = "configs/sst2/minilm_lowrank.py"


@pytest.fixture(scope="module")
def minilm(raw_data_dir, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("minilm") / "ckpt")
  convert_hf.convert(os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2"), out)
  return out


def _group(module: str, args: list[str]) -> list[str]:
  port = free_port()
  return run_process_group(
      [["-m", module, *args, f"--coordinator_address=localhost:{port}",
        f"--num_processes={PROCESSES}", f"--process_id={i}"] for i in range(PROCESSES)],
      DEVICES_EACH)


def _arrays(tree) -> dict[str, np.ndarray]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_convert_splits_the_checkpoint_over_the_processes(minilm, tmp_path):
  outs = _group("reparam_jax.convert", [f"--config={LOWRANK}", "--direction=to_reparam",
                                        f"--src={minilm}", f"--dst={tmp_path / 'group'}"])
  for i, out in enumerate(outs):
    assert f"process {i} of {PROCESSES} held 50% of the converted values" in out, out
  convert.main([f"--config={LOWRANK}", "--direction=to_reparam", f"--src={minilm}",
                f"--dst={tmp_path / 'one'}"])
  group = _arrays(checkpoint.load_params(str(tmp_path / "group")))
  one = _arrays(checkpoint.load_params(str(tmp_path / "one")))
  assert group.keys() == one.keys() and any("/u" in k for k in one)
  for k in one:
    np.testing.assert_array_equal(group[k], one[k], err_msg=k)


def test_params_and_adapters_stay_split_through_load_save_load(minilm, tmp_path):
  port = free_port()
  outs = run_process_group(
      [["-m", "tests.multihost_tools_worker", f"localhost:{port}", str(PROCESSES), str(i),
        minilm, str(tmp_path / "adapter")] for i in range(PROCESSES)], DEVICES_EACH)
  for i, out in enumerate(outs):
    found = json.loads(out.strip().splitlines()[-1])
    assert (found["process"], found["processes"], found["devices"]) == (
        i, PROCESSES, PROCESSES * DEVICES_EACH)
    # Every MiniLM array has a dimension 4 divides: exactly half on each process.
    assert found["share_loaded"] == pytest.approx(1 / PROCESSES), found
    assert found["share_adapter_loaded"] == pytest.approx(1 / PROCESSES), found
    assert found["adapter_round_trip_exact"] and found["adapter_leaves"] == 24, found


def _safetensors(folder) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
    out.update(safetensors.numpy.load_file(f))
  return out


def test_export_gathers_one_tensor_at_a_time_and_writes_what_one_process_writes(
    minilm, tmp_path):
  outs = _group("reparam_jax.export_hf", [f"--workdir={minilm}", f"--to={tmp_path / 'group'}",
                                          "--max_shard_mb=30"])
  assert "103 tensors, 3 files" in outs[0] and "exported" not in outs[1], outs
  export_hf.export(minilm, str(tmp_path / "one"), max_shard_bytes=30 * 10**6)
  for name in ("config.json", "model.safetensors.index.json", "vocab.txt"):
    with open(tmp_path / "group" / name) as a, open(tmp_path / "one" / name) as b:
      assert a.read() == b.read(), name
  group, one = _safetensors(tmp_path / "group"), _safetensors(tmp_path / "one")
  assert group.keys() == one.keys() and len(one) == 103
  for k in one:
    np.testing.assert_array_equal(group[k], one[k], err_msg=k)
