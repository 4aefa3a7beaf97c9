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
from reparam_jax.hf import peft_run
from reparam_jax.pytree.paths import dict_leaves, set_path, subtree
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint
from tests.helpers import free_port, run_process_group

# Minutes of 2-process runs: `make test` runs them on the current stack only.
pytestmark = pytest.mark.heavy

PROCESSES, DEVICES_EACH = 2, 2
LORA = "configs/sst2/minilm_lora.py"


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
  outs = _group("reparam_jax.convert", [f"--config={LORA}", "--direction=to_reparam",
                                        f"--src={minilm}", f"--dst={tmp_path / 'group'}"])
  for i, out in enumerate(outs):
    assert f"process {i} of {PROCESSES} held 50% of the converted values" in out, out
  convert.main([f"--config={LORA}", "--direction=to_reparam", f"--src={minilm}",
                f"--dst={tmp_path / 'one'}"])
  group = _arrays(checkpoint.load_params(str(tmp_path / "group")))
  one = _arrays(checkpoint.load_params(str(tmp_path / "one")))
  assert group.keys() == one.keys() and any("/lora_a" in k for k in one)
  for k in one:
    np.testing.assert_array_equal(group[k], one[k], err_msg=k)


def test_params_and_adapters_stay_split_through_load_save_load(minilm, tmp_path):
  port = free_port()
  outs = run_process_group(
      [["-m", "tests.multihost_tools_worker", "adapters", f"localhost:{port}", str(PROCESSES),
        str(i), minilm, str(tmp_path / "adapter")] for i in range(PROCESSES)], DEVICES_EACH)
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


def _lora_run(workdir: str, params, rules, init_from: str) -> None:
  """A training workdir as `export_hf --peft_dir` reads it: config.json and one
  train-state checkpoint holding θ params."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": {}, "task": "classification", "init_from": init_from,
               "reparam": {"rules": rules}}, f)
  checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1,
                                         async_save=False)
  checkpointer.save(1, {"params": params}, None)


def test_peft_export_compares_with_the_base_and_writes_what_one_process_writes(
    minilm, raw_data_dir, tmp_path):
  # DoRA on the queries, plain LoRA on the values: the adapter is written as DoRA, so the
  # values' magnitudes are computed from their W₀ (gathered one at a time).
  rules = ((r"block_\d+/attn/query/kernel", "lora(rank=8, alpha=16)|magnitude"),
           (r"block_\d+/attn/value/kernel", "lora(rank=4, alpha=8)"))
  rp = Reparam.from_config({"rules": rules})
  theta = jax.device_get(rp.from_dense(checkpoint.load_params(minilm), jax.random.key(0)))
  for name, leaf in dict_leaves(theta):  # trained factors: B ≠ 0, m ≠ ‖W₀‖
    if name.rsplit("/", 1)[-1] in ("lora_a", "lora_b", "magnitude"):
      set_path(theta, name, leaf + np.linspace(-0.1, 0.1, leaf.size, dtype=leaf.dtype
                                                ).reshape(leaf.shape))
  base = os.path.join(raw_data_dir, "models", "all-MiniLM-L6-v2")
  _lora_run(str(tmp_path / "run"), theta, rules, base)
  ln = "block_3/ln_attn/scale"  # a LayerNorm the run "trained": no adapter can carry it
  set_path(theta, ln, subtree(theta, ln) * 1.01)
  _lora_run(str(tmp_path / "bad_run"), theta, rules, base)

  port = free_port()
  outs = run_process_group(
      [["-m", "tests.multihost_tools_worker", "peft", f"localhost:{port}", str(PROCESSES),
        str(i), str(tmp_path / "run"), str(tmp_path / "bad_run"), str(tmp_path / "group")]
       for i in range(PROCESSES)], DEVICES_EACH)
  for i, out in enumerate(outs):
    found = json.loads(out.strip().splitlines()[-1])
    assert (found["process"], found["modules"]) == (i, 12), found
    assert f"parameter {ln} differs from the base model" in found["refused"], found
  assert not os.path.exists(tmp_path / "group-bad")

  peft_run.export_run_adapter(str(tmp_path / "run"), str(tmp_path / "one"))
  for name in ("adapter_config.json",):
    with open(tmp_path / "group" / name) as a, open(tmp_path / "one" / name) as b:
      assert json.load(a) == json.load(b), name
  group, one = _safetensors(tmp_path / "group"), _safetensors(tmp_path / "one")
  assert len(one) == 36 and group.keys() == one.keys()  # A, B, m of 12 modules
  for k in one:
    np.testing.assert_array_equal(group[k], one[k], err_msg=k)
