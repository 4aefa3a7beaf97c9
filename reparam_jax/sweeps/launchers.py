"""Running a sweep's points: here (parallel subprocesses), on SLURM, or on one TPU VM.

A point whose workdir holds `done.json` is skipped; any other is (re-)run in
the same workdir, where the trainer resumes.  See `python -m reparam_jax.sweep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps.points import DEFAULT_TRAIN_MODULE, RunPoint

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"  # the repository's launch/


@dataclasses.dataclass
class SweepResult:
  skipped: list[RunPoint] = dataclasses.field(default_factory=list)
  succeeded: list[RunPoint] = dataclasses.field(default_factory=list)
  submitted: list[RunPoint] = dataclasses.field(default_factory=list)
  failed: list[tuple[RunPoint, str]] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.failed


def _write_point_file(p: RunPoint, command: Sequence[str]) -> None:
  Path(p.workdir).mkdir(parents=True, exist_ok=True)
  info = {"name": p.name, "config": p.config, "overrides": p.overrides,
          "extra_args": list(p.extra_args), "command": list(command)}
  (Path(p.workdir) / rundir.POINT).write_text(json.dumps(info, indent=1, default=repr) + "\n")


def _gpu_slots(gpus: str | None, parallel: int) -> list[dict[str, str]]:
  if not gpus:
    return [{} for _ in range(parallel)]
  ids = [g for g in gpus.split(",") if g]
  if len(ids) < parallel:
    raise UserError(f"--gpus lists {len(ids)} GPUs for --parallel={parallel}; "
                    "need at least one each")
  per = len(ids) // parallel
  return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * per:(i + 1) * per])} for i in range(parallel)]


def run_local(points: Sequence[RunPoint], *, parallel: int = 1,
              train_module: str = DEFAULT_TRAIN_MODULE, python: str = sys.executable,
              gpus: str | None = None, dry_run: bool = False,
              result: SweepResult | None = None) -> SweepResult:
  """Runs the points that are not done, at most `parallel` at a time."""
  result = result or SweepResult()
  todo = []
  for p in points:
    if p.done:
      result.skipped.append(p)
    else:
      todo.append(p)
  if dry_run:
    for p in result.skipped:
      print(f"# done, skipped: {p.name}", file=sys.stderr)
    for p in todo:
      print(shlex.join(p.command(train_module, python)))
    return result
  slots = _gpu_slots(gpus, max(1, parallel))
  free = list(range(len(slots)))
  running: dict[int, tuple[RunPoint, subprocess.Popen[bytes], Any]] = {}
  pending = list(todo)
  base_env = dict(os.environ, PYTHONUNBUFFERED="1")
  if parallel > 1 and not gpus:
    # Several JAX processes on one GPU must not each grab 75% of its memory.
    base_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  try:
    while pending or running:
      while pending and free:
        p, slot = pending.pop(0), free.pop(0)
        cmd = p.command(train_module, python)
        _write_point_file(p, cmd)
        log = open(Path(p.workdir) / rundir.LOG, "ab")  # pylint: disable=consider-using-with
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"==== sweep {stamp}: {shlex.join(cmd)}\n".encode())
        log.flush()
        print(f"[sweep] start {p.name}", flush=True)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(base_env, **slots[slot]))
        running[slot] = (p, proc, log)
      time.sleep(0.05)
      for slot, (p, proc, log) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        log.close()
        del running[slot]
        free.append(slot)
        if rc != 0:
          result.failed.append((p, f"exit status {rc}"))
          print(f"[sweep] FAILED {p.name} (exit {rc})", flush=True)
        elif not p.done:
          result.failed.append((p, f"exited 0 but wrote no {rundir.DONE}"))
          print(f"[sweep] FAILED {p.name} (no {rundir.DONE})", flush=True)
        else:
          result.succeeded.append(p)
          print(f"[sweep] done {p.name}", flush=True)
  except KeyboardInterrupt:
    # A terminal Ctrl-C already reached the children (same process group); give
    # them time to stop cleanly before TERM, and KILL only as a last resort, so
    # a checkpoint being written is not torn.
    for sig, grace in ((None, 5), (signal.SIGTERM, 30), (signal.SIGKILL, 5)):
      alive = [(proc, log) for _, proc, log in running.values() if proc.poll() is None]
      for proc, _ in alive:
        if sig is not None:
          proc.send_signal(sig)
      deadline = time.monotonic() + grace
      while alive and time.monotonic() < deadline and any(p.poll() is None for p, _ in alive):
        time.sleep(0.1)
    for _, _, log in running.values():
      log.close()
    print("[sweep] interrupted; run the same command again to resume", file=sys.stderr)
    raise
  return result


def _script_command(script: str, launcher_args: Sequence[str], p: RunPoint, train_module: str,
                    extra: Sequence[str] = ()) -> list[str]:
  return ["bash", str(LAUNCH_DIR / script), *launcher_args, *extra,
          f"--module={train_module}", *p.train_args()]


def _slurm_active(job_file: Path) -> bool:
  if not job_file.exists():
    return False
  job = job_file.read_text().strip()
  try:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                         check=False, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return out.returncode == 0 and bool(out.stdout.strip())


def run_slurm(points: Sequence[RunPoint], *, launcher_args: Sequence[str] = (),
              train_module: str = DEFAULT_TRAIN_MODULE, dry_run: bool = False,
              result: SweepResult | None = None) -> SweepResult:
  """Submits one SLURM job per point that is neither done nor still queued/running."""
  result = result or SweepResult()
  for p in points:
    if p.done:
      result.skipped.append(p)
      continue
    job_file = Path(p.workdir) / "slurm_job_id"
    if not dry_run and _slurm_active(job_file):
      print(f"[sweep] {p.name}: job {job_file.read_text().strip()} still queued/running")
      result.submitted.append(p)
      continue
    cmd = _script_command("slurm.sh", launcher_args, p, train_module,
                          ["--dry-run"] if dry_run else [])
    if dry_run:
      print(f"# {p.name}")
      subprocess.run(cmd, check=False)
      continue
    _write_point_file(p, cmd)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
      with open(Path(p.workdir) / rundir.LOG, "a", encoding="utf-8") as f:
        f.write(out.stdout + out.stderr)
      result.failed.append((p, f"sbatch failed (exit {out.returncode}): {out.stderr.strip()}"))
      continue
    m = re.search(r"Submitted batch job (\d+)", out.stdout)
    if m:
      job_file.write_text(m.group(1) + "\n")
    result.submitted.append(p)
  return result


def run_tpu(points: Sequence[RunPoint], *, launcher_args: Sequence[str] = (),
            train_module: str = DEFAULT_TRAIN_MODULE, dry_run: bool = False,
            remote_root: str | None = None, keep: bool = False,
            result: SweepResult | None = None) -> SweepResult:
  """Runs the points one after another on one TPU VM/pod, fetching results into their workdirs."""
  result = result or SweepResult()
  todo = [p for p in points if not p.done]
  result.skipped += [p for p in points if p.done]
  if not todo:
    return result
  script = ["bash", str(LAUNCH_DIR / "tpu_pod.sh"), *launcher_args]
  dry = ["--dry-run"] if dry_run else []

  def call(cmd: list[str], log: Path | None = None) -> int:
    if dry_run:
      return subprocess.run(cmd, check=False).returncode
    if log is None:
      return subprocess.run(cmd, check=False).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
      f.write(f"==== sweep: {shlex.join(cmd)}\n".encode())
      f.flush()
      return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode

  if call([*script, "--steps=create,copy,install", *dry]) != 0:
    for p in todo:
      result.failed.append((p, "TPU setup (create/copy/install) failed"))
    return result
  for p in todo:
    local = p.workdir
    remote = f"{remote_root.rstrip('/')}/{p.name}" if remote_root else local
    rp = dataclasses.replace(p, workdir=remote)
    cmd = [*script, "--steps=run,fetch", f"--local-dir={local}", f"--log-name={p.name}", *dry,
           f"--module={train_module}", *rp.train_args()]
    if not dry_run:
      _write_point_file(p, cmd)
      print(f"[sweep] start {p.name} on TPU", flush=True)
    rc = call(cmd, None if dry_run else Path(local) / rundir.LOG)
    if dry_run:
      continue
    if rc != 0:
      result.failed.append((p, f"exit status {rc}"))
    elif not p.done:
      result.failed.append((p, f"no {rundir.DONE} fetched"))
    else:
      result.succeeded.append(p)
  if not keep:
    call([*script, "--steps=delete", *dry])
  return result


def run_points(points: Sequence[RunPoint], *, launcher: str = "local", parallel: int = 1,
               dry_run: bool = False, train_module: str = DEFAULT_TRAIN_MODULE,
               launcher_args: Sequence[str] = (), gpus: str | None = None,
               remote_root: str | None = None, tpu_keep: bool = False) -> SweepResult:
  """Dispatches to the launcher; the entry point shared by `sweep` and `ablate`."""
  if launcher == "local":
    return run_local(points, parallel=parallel, train_module=train_module, gpus=gpus,
                     dry_run=dry_run)
  if launcher == "slurm":
    return run_slurm(points, launcher_args=launcher_args, train_module=train_module,
                     dry_run=dry_run)
  if launcher == "tpu":
    if parallel > 1:
      print("warning: --parallel is ignored with --launcher=tpu (points share one pod)",
            file=sys.stderr)
    return run_tpu(points, launcher_args=launcher_args, train_module=train_module,
                   dry_run=dry_run, remote_root=remote_root, keep=tpu_keep)
  raise UserError(f"unknown --launcher={launcher}; use local, slurm or tpu")


def report(result: SweepResult, total: int, dry_run: bool = False) -> None:
  """Summary lines; failed points with their logs last, where they are seen."""
  if dry_run:
    print(f"[sweep] dry run: {total} points, {len(result.skipped)} already done", file=sys.stderr)
    return
  print(f"[sweep] {total} points: {len(result.skipped)} already done, "
        f"{len(result.succeeded)} ran, {len(result.submitted)} submitted/queued, "
        f"{len(result.failed)} failed")
  for p, why in result.failed:
    print(f"[sweep] FAILED {p.name}: {why}; log: {os.path.join(p.workdir, rundir.LOG)}")


def add_runner_flags(parser: argparse.ArgumentParser) -> None:
  """Flags shared by `sweep` and `ablate`."""
  parser.add_argument("--workdir", required=False, help="root directory; one subdir per point")
  parser.add_argument("--parallel", type=int, default=1, help="local subprocesses at a time")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the commands, run nothing")
  parser.add_argument("--launcher", default="local", choices=["local", "slurm", "tpu"])
  parser.add_argument("--launcher_args", "--launcher-args", dest="launcher_args", default="",
                      help="extra arguments for launch/slurm.sh or launch/tpu_pod.sh (one string)")
  parser.add_argument("--train_module", "--train-module", dest="train_module",
                      default=DEFAULT_TRAIN_MODULE, help="module run with python -m")
  parser.add_argument("--gpus", default=None,
                      help="local launcher: GPU ids split among the --parallel slots, e.g. 0,1,2,3")
  parser.add_argument("--remote_root", "--remote-root", dest="remote_root", default=None,
                      help="tpu launcher: workdir root on the TPU VMs (e.g. gs://bucket/sweep)")
  parser.add_argument("--tpu_keep", "--tpu-keep", dest="tpu_keep", action="store_true",
                      help="tpu launcher: do not delete the TPU at the end")
  parser.add_argument("--no_validate", "--no-validate", dest="validate", action="store_false",
                      help="do not build configs to check override keys")
