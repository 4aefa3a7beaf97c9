"""Real training processes killed (SIGKILL, also mid-save) and preempted (SIGTERM, one and two
processes) at random points, restarted each time: the final params and the loss curve equal
an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from tests.helpers import REPO, tiny_args, xla_flags

STEPS = 16
COMMON = dict(num_steps=STEPS, checkpoint_every=2, eval_every=8, keep_checkpoints=3)


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=xla_flags(devices),
              JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _start(args, devices=8, extra=()) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "reparam_jax.train", *args, *extra], cwd=REPO,
                          env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _train_records(workdir) -> list[dict]:
  return [r for r in rundir.read_metrics(workdir) if "train/loss" in r]


def _last_logged(workdir) -> int:
  return max((r["step"] for r in _train_records(workdir)), default=0)


def _tmp_dirs(ckdir) -> list[str]:
  try:
    return [n for n in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in n]
  except FileNotFoundError:
    return []


@pytest.fixture(scope="module")
def reference(tmp_path_factory, raw_data_dir, tfds_dir) -> str:
  """The uninterrupted run (in process, the same 8 simulated devices)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.main(tiny_args(workdir, raw_data_dir, tfds_dir, **COMMON))
  return workdir


def _assert_same_run(workdir: str, ref: str, exact: bool = True) -> None:
  got, want = _train_records(workdir), _train_records(ref)
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # each step logged once
  got_params = jax.tree.leaves(checkpoint.load_params(workdir))
  want_params = jax.tree.leaves(checkpoint.load_params(ref))
  if exact:
    assert [r["train/loss"] for r in got] == [r["train/loss"] for r in want]
    for a, b in zip(got_params, want_params):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  else:  # another process count: the same batches, reductions in another order
    np.testing.assert_allclose([r["train/loss"] for r in got],
                               [r["train/loss"] for r in want], rtol=1e-5)
    for a, b in zip(got_params, want_params):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 4 process starts: ~1 min idle, ~3 min on a loaded 2-core machine
def test_killed_and_preempted_at_random_points_resumes_to_the_same_result(
    reference, tmp_path, raw_data_dir, tfds_dir):
  seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 10_000))
  rng = random.Random(seed)
  workdir = str(tmp_path / "run")
  ckdir = os.path.join(workdir, "checkpoints")
  args = tiny_args(workdir, raw_data_dir, tfds_dir, **COMMON)
  log = [f"seed {seed}"]
  # A kill during a save, a preemption, then a kill at a random moment.
  for fault in ("sigkill-mid-save", "sigterm", "sigkill"):
    proc = _start(args)
    start = _last_logged(workdir)
    target = rng.randint(start + 1, STEPS - 3) if start + 1 <= STEPS - 3 else start + 1
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      if fault == "sigkill-mid-save" and _tmp_dirs(ckdir):
        break
      if fault != "sigkill-mid-save" and _last_logged(workdir) >= target:
        time.sleep(rng.uniform(0, 0.2))
        break
      time.sleep(0.001)
    if proc.poll() is not None:
      log.append(f"{fault}: finished first")
      break
    if fault == "sigterm":
      proc.send_signal(signal.SIGTERM)
      out, _ = proc.communicate(timeout=120)
      assert proc.returncode == 0, out
      assert "preempted: checkpoint saved at step" in out, out
      stopped = int(out.split("checkpoint saved at step ")[1].split(";")[0])
      assert stopped in checkpoint.Checkpointer(ckdir, every=1, keep=3).all_steps()
      log.append(f"sigterm: stopped at step {stopped}")
    else:
      proc.kill()
      proc.communicate(timeout=60)
      left = _tmp_dirs(ckdir)
      log.append(f"{fault}: killed after step {_last_logged(workdir)}, "
                 f"half-written: {left or 'none'}")
  done = subprocess.run([sys.executable, "-m", "reparam_jax.train", *args], cwd=REPO,
                        env=_env(8), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, (log, done.stdout[-2000:], done.stderr[-2000:])
  assert not _tmp_dirs(ckdir), log  # half-written saves were cleaned up
  print("; ".join(log))
  _assert_same_run(workdir, reference)


@pytest.mark.slow  # 2 × 2 process starts
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(
    reference, tmp_path, raw_data_dir, tfds_dir):
  workdir = str(tmp_path / "multi")
  port = 21000 + os.getpid() % 20000
  args = tiny_args(workdir, raw_data_dir, tfds_dir, reliability__preemption_sync_every=2,
                   **COMMON)

  def start_pair():
    return [_start(args, devices=1, extra=(f"--coordinator_address=localhost:{port}",
                                           "--num_processes=2", f"--process_id={i}"))
            for i in range(2)]

  procs = start_pair()
  deadline = time.time() + 240
  while time.time() < deadline and _last_logged(workdir) < 3 and procs[1].poll() is None:
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 learns it via the all-gather
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  steps = [int(o.split("checkpoint saved at step ")[1].split(";")[0]) for o in outs]
  assert steps[0] == steps[1] and steps[0] % 2 == 0 and steps[0] < STEPS, outs
  assert "received SIGTERM" in outs[1] and "received SIGTERM" not in outs[0]

  procs = start_pair()
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert f"resumed from step {steps[0]}" in outs[0]
  _assert_same_run(workdir, reference, exact=False)


# Logged every 4 steps, checkpointed every 3: a run stopped at a checkpoint is mid-window.
OFF_GRID = {"num_steps": 10, "log_every": 4, "checkpoint_every": 3, "eval_every": 5,
            "keep_checkpoints": 4}
# Fields that time the process that ran the steps (a resumed run's first window is timed over
# the steps it ran itself): the only ones a resumed run's metrics.jsonl may differ in.
TIMING = ("train/step_time_ms", "train/tokens_per_sec", "train/tokens_per_sec_per_device",
          "train/tflops_per_device", "train/mfu")


def _untimed(workdir) -> list[dict]:
  return [{k: v for k, v in r.items() if not k.startswith(TIMING)}
          for r in rundir.read_metrics(workdir)]


def test_a_run_stopped_off_the_log_grid_logs_the_uninterrupted_curve(
    tmp_path, raw_data_dir, tfds_dir, monkeypatch):
  """Preempted after the checkpoints of steps 3 and 6 (windows 1-4 and 5-8 half done): each
  resume carries the pending steps' metrics, so step 4 logs the mean over 1-4 and step 8 over
  5-8, as the uninterrupted run does; metrics.jsonl is the same record for record."""
  ref = str(tmp_path / "reference")
  train.main(tiny_args(ref, raw_data_dir, tfds_dir, **OFF_GRID))
  from reparam_jax.training import reliability
  monkeypatch.setattr(reliability.PreemptionWatcher, "should_stop",
                      lambda self, step: step in (3, 6))  # a SIGTERM seen at those steps
  workdir = str(tmp_path / "run")
  args = tiny_args(workdir, raw_data_dir, tfds_dir, **OFF_GRID)
  assert train.main(args) == {"step": 3, "preempted": True}
  assert train.main(args) == {"step": 6, "preempted": True}
  assert train.main(args)["step"] == 10
  got, want = _untimed(workdir), _untimed(ref)
  assert [r["step"] for r in got if "train/loss" in r] == [4, 8, 10]
  assert got == want


def test_a_checkpoint_data_item_with_or_without_a_log_window_restores_the_iterator():
  import json

  import grain.python as grain
  source = grain.MapDataset.range(10).to_iter_dataset()
  ran = iter(source)
  next(ran), next(ran)
  fresh = iter(source)
  data = checkpoint.DataRestore(fresh)
  data.set_state(json.dumps(ran.get_state()).encode())  # a bare iterator state
  assert (next(fresh), data.extra) == (2, {})
  window = {"log_window": [{"loss": 4.25, "nonfinite": 0.0}]}
  data.set_state(checkpoint.DataSnapshot(ran, window).get_state())
  assert (next(fresh), data.extra) == (2, window)


def test_grace_period_bounds_a_stuck_shutdown():
  """If the checkpoint after a signal hangs, the watchdog exits (143) at the grace period."""
  code = ("import os, signal, time\n"
          "from reparam_jax.training.reliability import PreemptionWatcher\n"
          "w = PreemptionWatcher(grace_s=1.0)\n"
          "os.kill(os.getpid(), signal.SIGTERM)\n"
          "time.sleep(60)\n")
  t0 = time.time()
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(1), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 143, out.stderr
  assert time.time() - t0 < 50
  assert "did not finish within reliability.preemption_grace_s=1s" in out.stderr
