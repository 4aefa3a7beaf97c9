"""Several trainer processes on localhost, training together through jax.distributed (gloo).

Each process loads only its share of every global batch (per-host input
sharding); the loss curve must match one process holding all devices, and
the checkpoint the group writes must restore in a single process.  The
SLURM case starts the processes the way `srun` would (SLURM_* variables and
`--distributed`, as launch/slurm.sbatch does), so JAX's own cluster
detection finds the coordinator.  `compress` runs the same way (its tools'
siblings are in tests/test_multihost_tools.py).
"""

import json
import os
import socket

import jax
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.training import devices
from tests.helpers import free_port, run_process_group, run_train_subprocess, tiny_args

STEPS = dict(num_steps=4, eval_every=4, checkpoint_every=4)
GLOBAL_DEVICES = 4


def _losses(workdir: str) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in rundir.read_metrics(workdir)
          if "train/loss" in r}


def _slurm_job_id_with_free_port() -> int:
  # JAX derives the coordinator port from the job id: id % 4096 + 61440.
  for job_id in range(os.getpid(), os.getpid() + 4096):
    with socket.socket() as s:
      try:
        s.bind(("localhost", job_id % 4096 + 61440))
        return job_id
      except OSError:
        continue
  pytest.skip("no free port in JAX's SLURM coordinator range")


def _run_group(workdir: str, raw_dir: str, tfds_dir: str, num_processes: int,
               extra_env: list[dict[str, str]], extra_args: list[list[str]]) -> list[str]:
  outs = run_process_group(
      [["-m", "reparam_jax.train", *tiny_args(workdir, raw_dir, tfds_dir, **STEPS),
        *extra_args[i]] for i in range(num_processes)],
      GLOBAL_DEVICES // num_processes, extra_env)
  assert f"{GLOBAL_DEVICES} devices, {num_processes} processes" in outs[0], outs[0]
  return outs


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, raw_data_dir, tfds_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("single"))
  result = run_train_subprocess(tiny_args(workdir, raw_data_dir, tfds_dir, **STEPS),
                                devices=GLOBAL_DEVICES)
  assert result.returncode == 0, result.stderr
  return workdir


def _check_matches_single_process(workdir: str, single: str) -> None:
  a, b = _losses(single), _losses(workdir)
  assert a.keys() == b.keys() and len(a) == STEPS["num_steps"]
  np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-5)
  # The group's checkpoint restores here, in this one process.
  params = checkpoint.load_params(workdir)
  assert params["block_0"]["mlp"]["fc_in"]["kernel"].shape == (16, 32)
  np.testing.assert_allclose(
      np.asarray(params["block_0"]["mlp"]["fc_in"]["kernel"]),
      np.asarray(checkpoint.load_params(single)["block_0"]["mlp"]["fc_in"]["kernel"]),
      rtol=1e-4, atol=1e-6)


# 2 processes of 2 devices each are the SLURM test's group (below); `make test-all` runs
# them with explicit flags too.
@pytest.mark.parametrize("num_processes", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_processes_match_one_process(num_processes, single_process, tmp_path, raw_data_dir,
                                     tfds_dir):
  """N processes (explicit coordinator flags) train like one process with all devices."""
  port = free_port()
  args = [[f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}"] for i in range(num_processes)]
  _run_group(str(tmp_path), raw_data_dir, tfds_dir, num_processes,
             [{}] * num_processes, args)
  _check_matches_single_process(str(tmp_path), single_process)


@pytest.mark.heavy
def test_slurm_one_process_per_node(single_process, tmp_path, raw_data_dir, tfds_dir):
  """`srun` + `--distributed` with REPARAM_PER=node: 2 "nodes", 2 devices each."""
  job_id = _slurm_job_id_with_free_port()
  env = [{"SLURM_JOB_ID": str(job_id), "SLURM_STEP_NODELIST": "localhost",
          "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": "0",
          "REPARAM_LOCAL_DEVICE_IDS": "0,1"} for i in range(2)]
  _run_group(str(tmp_path), raw_data_dir, tfds_dir, 2, env, [["--distributed"]] * 2)
  _check_matches_single_process(str(tmp_path), single_process)


def test_local_device_ids_from_environment():
  assert devices.local_device_ids({}) is None
  assert devices.local_device_ids({"REPARAM_LOCAL_DEVICE_IDS": "0,1,2,3"}) == [0, 1, 2, 3]
  for bad in ("0,,1", "a,b", "0,0", "-1"):
    with pytest.raises(UserError, match="REPARAM_LOCAL_DEVICE_IDS"):
      devices.local_device_ids({"REPARAM_LOCAL_DEVICE_IDS": bad})


@pytest.mark.heavy
def test_compress_on_two_processes_writes_what_one_process_writes(single_process, tmp_path):
  """`reparam_jax.compress` with the weights split over 2 processes (tests/test_multihost_tools.py
  has convert, adapters and export): the same compressed weights and evaluations."""
  from reparam_jax.compression.recipe import compress

  recipe = "svd(rank=8),prune(magnitude,0.5),quantize(int8)"
  port = free_port()
  outs = run_process_group(
      [["-m", "reparam_jax.compress", f"--workdir={single_process}", f"--out={tmp_path / 'two'}",
        f"--recipe={recipe}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
        f"--process_id={i}"] for i in range(2)], GLOBAL_DEVICES // 2)
  assert "| quantize(int8) |" in outs[0] and "quantize(int8)" not in outs[1], outs
  one = compress(single_process, recipe, str(tmp_path / "one"), log=lambda *_: None)
  with open(tmp_path / "two" / "report.json") as f:
    two = json.load(f)
  assert [r["step"] for r in two["rows"]] == [r["step"] for r in one["rows"]]
  for a, b in zip(two["rows"], one["rows"]):
    assert a["kernel_zeros"] == b["kernel_zeros"] and a["stored_bytes"] == b["stored_bytes"]
    np.testing.assert_allclose(a["eval_loss"], b["eval_loss"], rtol=1e-5)
  got = checkpoint.load_params(str(tmp_path / "two" / "params"))
  want = checkpoint.load_params(str(tmp_path / "one" / "params"))
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert flat_got.keys() == flat_want.keys()
  for k in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[k]), np.asarray(flat_want[k]), err_msg=str(k))


@pytest.mark.heavy
def test_sensitivity_pruning_on_two_processes_prunes_what_one_process_prunes(
    single_process, tmp_path):
  """`python -m reparam_jax.sparsity.sensitivity` with the weights and masks split over 2
  processes: the same pruned heads, evaluations and saved masks as in one process."""
  from reparam_jax.sparsity import sensitivity

  flags = ["--target=0.5", "--granularity=heads", "--max_batches=1"]
  port = free_port()
  outs = run_process_group(
      [["-m", "reparam_jax.sparsity.sensitivity", f"--workdir={single_process}",
        f"--out={tmp_path / 'two'}", *flags, f"--coordinator_address=localhost:{port}",
        "--num_processes=2", f"--process_id={i}"] for i in range(2)], GLOBAL_DEVICES // 2)
  assert "full validation split" in outs[0] and "full validation split" not in outs[1], outs
  one = sensitivity.main([f"--workdir={single_process}", f"--out={tmp_path / 'one'}", *flags])
  with open(tmp_path / "two" / "sensitivity.json") as f:
    two = json.load(f)
  assert [h.get("units") for h in two["history"]] == [h.get("units") for h in one["history"]]
  assert len(one["history"]) == 2 and one["history"][1]["units"]  # a head was pruned
  np.testing.assert_allclose([h["metric"] for h in two["history"]],
                             [h["metric"] for h in one["history"]], rtol=1e-5)
  got = checkpoint.load_params(str(tmp_path / "two" / "masks"))
  want = checkpoint.load_params(str(tmp_path / "one" / "masks"))
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert flat_got.keys() == flat_want.keys() and flat_want
  for k in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[k]), np.asarray(flat_want[k]), err_msg=str(k))
