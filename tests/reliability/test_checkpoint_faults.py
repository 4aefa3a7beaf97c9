"""Corrupt, partial and unwritable checkpoints, on real orbax checkpoints of a small state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import CheckpointError, UserError
from reparam_jax.rundir import checkpoint
from reparam_jax.training import reliability

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(step: int) -> dict:
  return {"params": {"w": jnp.full((64, 32), float(step)), "b": jnp.arange(32.0) + step},
          "step": jnp.int32(step)}


def _abstract() -> dict:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      _state(0))


def _write(directory, steps, keep=5) -> None:
  ckpt = checkpoint.Checkpointer(str(directory), every=1, keep=keep)
  for s in steps:
    ckpt.save(s, _state(s), None, force=True)
  ckpt.close()


def _truncate_data_files(step_dir) -> None:
  for root, _, files in os.walk(step_dir / "state"):
    if os.path.basename(root) == "d":
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(3)


CORRUPTIONS = {
    "truncated array data": _truncate_data_files,
    "missing state metadata": lambda d: os.remove(d / "state" / "_METADATA"),
    "missing checkpoint metadata": lambda d: os.remove(d / "_CHECKPOINT_METADATA"),
    "garbage manifest": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(b"\x00garbage"),
    "emptied directory": lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink()
                                    for p in list(d.iterdir())],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_is_set_aside_and_previous_used(tmp_path, capfd, kind):
  ckdir = tmp_path / "checkpoints"
  _write(ckdir, [1, 2, 3])
  CORRUPTIONS[kind](ckdir / "3")

  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=2)
  step, state = ckpt.restore_latest_good(_abstract(), None)
  assert step == 2
  np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((64, 32), 2.0))
  err = capfd.readouterr().err
  assert f"checkpoint {ckdir / '3'} is corrupt or incomplete" in err and "corrupt-3" in err
  assert (ckdir / "corrupt-3").is_dir()  # kept for inspection, never deleted

  # The next save at the same step and keep-N garbage collection both work
  # and leave the quarantined copy alone.
  for s in (3, 4, 5):
    assert ckpt.save(s, _state(s), None, force=True)
  ckpt.close()
  assert sorted(os.listdir(ckdir)) == ["4", "5", "corrupt-3"]
  again = checkpoint.Checkpointer(str(ckdir), every=1, keep=2)
  assert again.restore_latest_good(_abstract(), None)[0] == 5
  again.close()


def test_all_corrupt_starts_from_scratch_and_twice_corrupt_keeps_both(tmp_path):
  ckdir = tmp_path / "checkpoints"
  _write(ckdir, [1])
  _truncate_data_files(ckdir / "1")
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=2)
  assert ckpt.restore_latest_good(_abstract(), None) == (0, None)
  ckpt.save(1, _state(1), None, force=True)
  ckpt.close()
  _truncate_data_files(ckdir / "1")
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=2)
  assert ckpt.restore_latest_good(_abstract(), None) == (0, None)
  ckpt.close()
  assert sorted(os.listdir(ckdir)) == ["corrupt-1", "corrupt-1.2"]


def test_half_written_tmp_dir_is_ignored_and_removed(tmp_path):
  """What a kill -9 during a save leaves behind: orbax's tmp dir, never renamed."""
  ckdir = tmp_path / "checkpoints"
  _write(ckdir, [1, 2])
  shutil.copytree(ckdir / "2", ckdir / "3.orbax-checkpoint-tmp-1234")
  _truncate_data_files(ckdir / "3.orbax-checkpoint-tmp-1234")
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=5)
  assert ckpt.restore_latest_good(_abstract(), None)[0] == 2
  ckpt.close()
  assert sorted(os.listdir(ckdir)) == ["1", "2"]


def test_load_params_skips_a_corrupt_latest_without_moving_it(tmp_path):
  ckdir = tmp_path / "checkpoints"
  _write(ckdir, [1, 2])
  os.remove(ckdir / "2" / "state" / "_METADATA")
  params = checkpoint._latest_good_params(ckdir)  # what load_params(workdir) uses
  assert float(np.asarray(params["b"])[0]) == 1.0
  assert sorted(os.listdir(ckdir)) == ["1", "2"]
  _truncate_data_files(ckdir / "1")
  with pytest.raises(UserError, match="no readable checkpoint"):
    checkpoint._latest_good_params(ckdir)


def _block(ckdir) -> None:
  """Makes the checkpoint directory unusable: a file where the directory was."""
  os.rename(ckdir, str(ckdir) + ".away")
  ckdir.write_text("not a directory")


def _unblock(ckdir) -> None:
  os.remove(ckdir)
  os.rename(str(ckdir) + ".away", ckdir)


def test_failed_save_is_retried_and_succeeds_once_the_fault_clears(tmp_path, capfd):
  ckdir = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=3, async_save=False,
                                 save_retries=3, retry_wait_s=0.3)
  ckpt.save(1, _state(1), None, force=True)
  _block(ckdir)
  timer = threading.Timer(0.4, _unblock, args=(ckdir,))
  timer.start()
  try:
    ckpt.save(2, _state(2), None, force=True)
  finally:
    timer.join()
  ckpt.close()
  assert "saving the checkpoint of step 2 failed" in capfd.readouterr().err
  assert sorted(os.listdir(ckdir)) == ["1", "2"]


@pytest.mark.parametrize("async_save", [False, True])
def test_persistent_save_failure_stops_with_checkpoint_error(tmp_path, async_save):
  ckdir = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=3, async_save=async_save,
                                 save_retries=2, retry_wait_s=0.01)
  ckpt.save(1, _state(1), None, force=True)
  ckpt.wait()
  _block(ckdir)
  with pytest.raises(CheckpointError, match="last complete checkpoint is step 1"):
    for s in range(2, 8):  # never continues silently: fails by the retry limit
      ckpt.save(s, _state(s), None, force=True)
    ckpt.close()
  _unblock(ckdir)


_BLOCKED_WITH_DATA_ITERATOR = """
import os, sys
import grain.python as grain
import jax.numpy as jnp
from reparam_jax.rundir import checkpoint
from reparam_jax.errors import CheckpointError
root = sys.argv[1]
data_iter = iter(grain.MapDataset.range(100).to_iter_dataset())
ckpt = checkpoint.Checkpointer(os.path.join(root, "checkpoints"), every=1, keep=3,
                               save_retries=1, retry_wait_s=0.01)
ckpt.save(1, {"w": jnp.ones((8, 8))}, data_iter, force=True)
ckpt.wait()
os.rename(os.path.join(root, "checkpoints"), os.path.join(root, "away"))
open(os.path.join(root, "checkpoints"), "w").write("a file where the directory was")
try:
  for s in range(2, 6):
    ckpt.save(s, {"w": jnp.full((8, 8), float(s))}, data_iter, force=True)
  ckpt.close()
except CheckpointError as e:
  print("CheckpointError:", e)
"""


def test_replaced_directory_with_a_data_iterator_fails_fast_not_hangs(tmp_path):
  """With an iterator item, orbax waited 10 minutes per attempt for a directory it
  could not create; the save must fail fast instead (a subprocess: a hang is a timeout)."""
  proc = subprocess.run([sys.executable, "-c", _BLOCKED_WITH_DATA_ITERATOR, str(tmp_path)],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert "CheckpointError: could not save the checkpoint of step 2" in proc.stdout, proc.stderr
  assert sorted(os.listdir(tmp_path / "away")) == ["1"]  # the good checkpoint is untouched


def test_disk_space_rules():
  mib = 1 << 20
  assert reliability.disk_space_problem(100 * mib, 10 * mib, keep=3) == ("", "")
  error, warning = reliability.disk_space_problem(30 * mib, 10 * mib, keep=3)
  assert not error and "keep_checkpoints=3" in warning
  error, _ = reliability.disk_space_problem(5 * mib, 10 * mib, keep=3)
  assert "not enough disk space for one checkpoint" in error


@pytest.fixture
def small_tmpfs(tmp_path):
  """A real 256 KiB filesystem (needs mount permission, e.g. root in a container)."""
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (not root)")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_precheck_refuses_a_disk_too_small_for_one_checkpoint(small_tmpfs):
  big = reliability.tree_bytes({"w": jax.ShapeDtypeStruct((512, 1024), jnp.float32)})  # 2 MiB
  with pytest.raises(UserError, match="not enough disk space for one checkpoint"):
    reliability.check_disk_space(str(small_tmpfs / "checkpoints"), big, keep=3)


def test_disk_filling_up_mid_run_is_reported_not_silent(small_tmpfs, capfd):
  """Real ENOSPC: each ~100 KiB checkpoint fits alone, but not keep=5 of them."""
  ckpt = checkpoint.Checkpointer(str(small_tmpfs / "checkpoints"), every=1, keep=5,
                                 save_retries=1, retry_wait_s=0.01)
  with pytest.raises(CheckpointError, match="could not save|failed"):
    for s in range(1, 10):
      # Random values: constant arrays would compress to nothing.
      ckpt.save(s, {"w": jax.random.normal(jax.random.key(s), (160, 160))}, None, force=True)
    ckpt.close()
  assert "failed" in capfd.readouterr().err


def test_a_checkpoint_of_another_model_is_a_user_error_not_corruption(tmp_path):
  """Resuming with a changed config must not set good checkpoints aside and restart."""
  ckdir = tmp_path / "checkpoints"
  _write(ckdir, [1, 2])
  other = {"params": {"w": jax.ShapeDtypeStruct((64, 48), jnp.float32),
                      "b": jax.ShapeDtypeStruct((32,), jnp.float32)},
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  ckpt = checkpoint.Checkpointer(str(ckdir), every=1, keep=5)
  with pytest.raises(UserError, match="holds a different model or optimizer than this config"):
    ckpt.restore_latest_good(other, None)
  ckpt.close()
  assert sorted(os.listdir(ckdir)) == ["1", "2"]
