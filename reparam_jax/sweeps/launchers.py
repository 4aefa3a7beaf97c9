"""Running a sweep's points: here (parallel subprocesses), as one SLURM job array, or on TPU pods.

A point whose workdir holds `done.json` is skipped; any other is (re-)run in
the same workdir, where the trainer resumes from its checkpoint. A point that
fails is retried up to `--max_retries` times: in the same call here and on
TPUs, on the next call of the command for SLURM (whose jobs outlive the
call). `point.json` records what each launcher did (command, `attempts`, the
SLURM job and array task) beside the trainer's provenance (rundir/provenance.py).
See `python -m reparam_jax.sweep` and docs/launching.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reparam_jax.errors import TrainingDiverged, UserError
from reparam_jax.rundir import provenance
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps.points import DEFAULT_TRAIN_MODULE, RunPoint

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"  # the repository's launch/
DEFAULT_MAX_RETRIES = 2
DEFAULT_ARRAY_LIMIT = 8
SLURM_MAX_ARRAY = 1000  # SLURM's default MaxArraySize is 1001 (indices 0..1000)
# Exits a retry cannot change: a bad config, and a diverged run (resuming from its last good
# checkpoint diverges again at the same step: the data order and the params are the same).
NOT_RETRIED = (UserError.exit_code, TrainingDiverged.exit_code)
# Keys of the trainer's point.json that a TPU run leaves on the pod and fetch brings back.
TRAINER_KEYS = ("provenance", "start", "end", "status", "starts", "history")


@dataclasses.dataclass
class SweepResult:
  skipped: list[RunPoint] = dataclasses.field(default_factory=list)
  succeeded: list[RunPoint] = dataclasses.field(default_factory=list)
  submitted: list[RunPoint] = dataclasses.field(default_factory=list)
  failed: list[tuple[RunPoint, str]] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.failed


def attempts_of(p: RunPoint) -> int:
  """How many times a launcher started or submitted the point (point.json's `attempts`)."""
  return int(provenance.read_point(p.workdir).get("attempts") or 0)


def _launch_info(launcher: str) -> dict[str, Any]:
  commit, dirty = provenance.git_state()
  return {"launcher": launcher, "time": provenance.now(), "commit": commit, "dirty": dirty}


def _write_point_file(p: RunPoint, command: Sequence[str], launcher: str,
                      **fields: Any) -> dict[str, Any]:
  """Merges the launcher's record into point.json (the trainer's provenance stays) and
  counts the attempt."""
  return provenance.update_point(p.workdir, {
      "name": p.name, "config": p.config, "overrides": p.overrides,
      "extra_args": list(p.extra_args), "command": list(command),
      "attempts": attempts_of(p) + 1, "launch": _launch_info(launcher), **fields})


def _common_root(points: Sequence[RunPoint]) -> Path:
  """The sweep's ROOT: the folder holding the points' workdirs."""
  parents = {os.path.dirname(os.path.abspath(p.workdir)) for p in points}
  return Path(os.path.commonpath(sorted(parents)))


def _stamp() -> str:
  return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _gpu_slots(gpus: str | None, parallel: int) -> list[dict[str, str]]:
  if not gpus:
    return [{} for _ in range(parallel)]
  ids = [g for g in gpus.split(",") if g]
  if len(ids) < parallel:
    raise UserError(f"--gpus lists {len(ids)} GPUs for --parallel={parallel}; "
                    "need at least one each")
  per = len(ids) // parallel
  return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * per:(i + 1) * per])} for i in range(parallel)]


def _failure(rc: int, p: RunPoint, what: str = rundir.DONE) -> str | None:
  """Why a finished attempt failed, or None when it succeeded."""
  if rc != 0:
    return f"exit status {rc}"
  if not p.done:
    return f"exited 0 but wrote no {what}"
  return None


def _give_up(rc: int, tries: int, max_retries: int) -> bool:
  return rc in NOT_RETRIED or tries > max_retries


def run_local(points: Sequence[RunPoint], *, parallel: int = 1,
              train_module: str = DEFAULT_TRAIN_MODULE, python: str = sys.executable,
              gpus: str | None = None, dry_run: bool = False,
              max_retries: int = DEFAULT_MAX_RETRIES,
              result: SweepResult | None = None) -> SweepResult:
  """Runs the points that are not done, at most `parallel` at a time.

  A failed point goes back to the end of the queue (and resumes from its
  checkpoint) until it has failed `1 + max_retries` times in this call; exit
  status 2 (a `UserError`: bad config or flags) is not retried.
  """
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
  tries: dict[str, int] = {}
  started: dict[str, float] = {}  # point name -> when its current try started
  finished_s: list[float] = []  # wall time of each point that succeeded in this call
  base_env = dict(os.environ, PYTHONUNBUFFERED="1")
  if parallel > 1 and not gpus:
    # Several JAX processes on one GPU must not each grab 75% of its memory.
    base_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  try:
    while pending or running:
      while pending and free:
        p, slot = pending.pop(0), free.pop(0)
        cmd = p.command(train_module, python)
        _write_point_file(p, cmd, "local")
        tries[p.name] = tries.get(p.name, 0) + 1
        log = open(Path(p.workdir) / rundir.LOG, "ab")  # noqa: SIM115 (closed when the run ends)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"==== sweep {stamp} (try {tries[p.name]}): {shlex.join(cmd)}\n".encode())
        log.flush()
        print(f"[sweep] start {p.name}" + (f" (retry {tries[p.name] - 1}/{max_retries})"
                                           if tries[p.name] > 1 else ""), flush=True)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(base_env, **slots[slot]))
        running[slot] = (p, proc, log)
        started[p.name] = time.monotonic()
      time.sleep(0.05)
      for slot, (p, proc, log) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        log.close()
        del running[slot]
        free.append(slot)
        why = _failure(rc, p)
        if why is None:
          result.succeeded.append(p)
          finished_s.append(time.monotonic() - started[p.name])
          left = len(pending) + len(running)
          print(f"[sweep] done {p.name} ({_progress(finished_s, len(todo), left, len(slots))})",
                flush=True)
        elif not _give_up(rc, tries[p.name], max_retries):
          print(f"[sweep] {p.name} failed ({why}); retrying from its checkpoint", flush=True)
          pending.append(p)
        else:
          tried = f" after {tries[p.name]} attempts" if tries[p.name] > 1 else ""
          result.failed.append((p, why + tried))
          print(f"[sweep] FAILED {p.name} ({why}{tried})", flush=True)
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


def _progress(finished_s: Sequence[float], total: int, left: int, slots: int) -> str:
  """"3/27 done in this call, this one 6.9 min; about 2.8 h left": the last from the mean
  wall time of the points finished so far, `slots` at a time (a rough guide for a long
  ablation, whose rows differ in cost)."""
  mean = statistics.fmean(finished_s)
  eta_s = mean * left / max(1, slots)
  eta = f"{eta_s / 3600:.1f} h" if eta_s >= 5400 else f"{eta_s / 60:.0f} min"
  text = f"{len(finished_s)}/{total} done in this call, this one {finished_s[-1] / 60:.1f} min"
  return text + (f"; about {eta} left" if left else "")


def _script_command(script: str, launcher_args: Sequence[str], p: RunPoint, train_module: str,
                    extra: Sequence[str] = ()) -> list[str]:
  return ["bash", str(LAUNCH_DIR / script), *launcher_args, *extra,
          f"--module={train_module}", *p.train_args()]


# --------------------------------------------------------------------------- SLURM


def slurm_job_of(p: RunPoint) -> str | None:
  """The point's last SLURM job: "JOB_TASK" for an array task, "JOB" for a lone job."""
  job = (provenance.read_point(p.workdir).get("slurm") or {}).get("job_id")
  if job:
    return str(job)
  legacy = Path(p.workdir) / "slurm_job_id"  # one job per point, before job arrays
  if not legacy.exists():
    return None
  return legacy.read_text().strip() or None


def slurm_active(job_ids: Sequence[str]) -> set[str]:
  """Those of `job_ids` ("123" or "123_4") that SLURM still has queued or running.

  One `squeue -r` per array job. A job SLURM has forgotten ("Invalid job id")
  is not active; any other squeue failure stops the sweep, since guessing
  wrong would submit a point twice into one workdir.
  """
  active: set[str] = set()
  for job in sorted({j.split("_")[0] for j in job_ids}):
    try:
      out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True,
                           text=True, check=False, timeout=120)
    except OSError:
      raise UserError("squeue not found: --launcher=slurm needs the SLURM client tools on PATH "
                      "(run the command on a login node)") from None
    except subprocess.TimeoutExpired:
      raise UserError(f"squeue -j {job} did not answer in 120 s; try again later") from None
    if out.returncode != 0:
      if "invalid job id" in out.stderr.lower():
        continue
      raise UserError(f"squeue -j {job} failed ({out.stderr.strip() or out.returncode}); cannot "
                      "tell which points are still queued")
    active |= set(out.stdout.split())
  return active & set(job_ids)


def _array_chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
  return [items[i:i + size] for i in range(0, len(items), size)]


def run_slurm(points: Sequence[RunPoint], *, launcher_args: Sequence[str] = (),
              train_module: str = DEFAULT_TRAIN_MODULE, dry_run: bool = False,
              array_limit: int = DEFAULT_ARRAY_LIMIT, max_retries: int = DEFAULT_MAX_RETRIES,
              result: SweepResult | None = None) -> SweepResult:
  """Submits every point that is neither done nor queued/running as ONE SLURM job array.

  ROOT/slurm/array_<time>.txt holds one point per line (its trainer arguments,
  shell-quoted); array task i runs line i+1 through launch/slurm_array.sbatch,
  at most `array_limit` at a time. A point whose earlier submissions all ended
  without done.json is resubmitted until it has had `1 + max_retries`
  attempts, then reported as failed (a preempted task is requeued by SLURM
  itself and stays queued, so it is not a failed attempt).
  """
  if array_limit < 1:
    raise UserError(f"--array_limit={array_limit}: need at least 1 task at a time")
  result = result or SweepResult()
  unfinished = [p for p in points if not p.done]
  result.skipped += [p for p in points if p.done]
  jobs = {p.name: slurm_job_of(p) for p in unfinished}
  recorded = [j for j in jobs.values() if j]
  active = slurm_active(recorded) if recorded and not dry_run else set()
  todo: list[RunPoint] = []
  for p in unfinished:
    job = jobs[p.name]
    if job in active:
      print(f"[sweep] {p.name}: job {job} still queued/running")
      result.submitted.append(p)
      continue
    attempts = attempts_of(p)
    if attempts > max_retries:
      last = f" (last: SLURM job {job})" if job else ""
      why = (f"failed {attempts} attempts{last}; not resubmitted "
             f"(--max_retries={max_retries}; raise it to try again)")
      result.failed.append((p, why))
      continue
    if attempts:
      print(f"[sweep] {p.name}: {f'job {job}' if job else 'its last attempt'} ended without "
            f"{rundir.DONE}; resubmitting "
            f"(retry {attempts}/{max_retries})")
    todo.append(p)
  if not todo:
    return result
  slurm_dir = _common_root(todo) / "slurm"
  for chunk in _array_chunks(todo, SLURM_MAX_ARRAY):
    array_file = slurm_dir / f"array_{_stamp()}.txt"
    lines = [shlex.join(p.train_args()) for p in chunk]
    cmd = ["bash", str(LAUNCH_DIR / "slurm.sh"), *launcher_args, f"--array-file={array_file}",
           f"--array-size={len(chunk)}", f"--array-limit={array_limit}",
           f"--module={train_module}"]
    if dry_run:
      for i, (p, line) in enumerate(zip(chunk, lines)):
        print(f"# array task {i}: {p.name}: {line}")
      subprocess.run([*cmd, "--dry-run"], check=False)
      continue
    slurm_dir.mkdir(parents=True, exist_ok=True)
    array_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stdout.write(out.stdout)
    m = re.search(r"Submitted batch job (\d+)", out.stdout)
    if out.returncode != 0 or not m:
      why = f"sbatch failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}"
      result.failed += [(p, why) for p in chunk]
      continue
    job = m.group(1)
    for i, p in enumerate(chunk):
      _write_point_file(p, _script_command("slurm.sh", launcher_args, p, train_module), "slurm",
                        slurm={"job_id": f"{job}_{i}", "array_job": job, "task": i,
                               "array_file": str(array_file)})
      (Path(p.workdir) / "slurm_job_id").write_text(f"{job}_{i}\n")
      result.submitted.append(p)
    print(f"[sweep] job array {job}: {len(chunk)} points, at most {array_limit} at a time "
          f"(lines: {array_file})")
  return result


# --------------------------------------------------------------------------- TPU


def _merge_fetched_point(p: RunPoint) -> None:
  """Folds the trainer's point.json, fetched from the pod, into the local one."""
  fetched = Path(p.workdir) / "point_remote.json"
  if not fetched.exists():
    return
  try:
    remote = json.loads(fetched.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    remote = {}
  if isinstance(remote, dict):
    provenance.update_point(p.workdir, {k: remote[k] for k in TRAINER_KEYS if k in remote})
  fetched.unlink()


def _pod_args(launcher_args: Sequence[str], pod: str | None) -> list[str]:
  return [*launcher_args, f"--name={pod}"] if pod else list(launcher_args)


def _run_pod(pod: str | None, share: Sequence[RunPoint], *, launcher_args: Sequence[str],
             train_module: str, dry_run: bool, remote_root: str | None, keep: bool,
             max_retries: int, setup_log: Path | None) -> list[tuple[RunPoint, str | None]]:
  """One pod's part: create/copy/install, then each point run+fetch in turn, then delete.

  Returns (point, None) for a point that finished, (point, why) for one that failed.
  """
  script = ["bash", str(LAUNCH_DIR / "tpu_pod.sh"), *_pod_args(launcher_args, pod)]
  dry = ["--dry-run"] if dry_run else []
  label = pod or "tpu"

  def call(cmd: list[str], log: Path | None) -> int:
    if dry_run or log is None:
      return subprocess.run(cmd, check=False).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
      f.write(f"==== sweep {provenance.now()}: {shlex.join(cmd)}\n".encode())
      f.flush()
      return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode

  if dry_run:
    print(f"# pod {label}: {len(share)} points: {', '.join(p.name for p in share)}", flush=True)
  else:
    print(f"[sweep] pod {label}: {len(share)} points; setup log: {setup_log}", flush=True)
  if call([*script, "--steps=create,copy,install", *dry], setup_log) != 0:
    return [(p, f"TPU setup (create/copy/install) of {label} failed; log: {setup_log}")
            for p in share]
  out: list[tuple[RunPoint, str | None]] = []
  for p in share:
    local = p.workdir
    remote = f"{remote_root.rstrip('/')}/{p.name}" if remote_root else local
    rp = dataclasses.replace(p, workdir=remote)
    cmd = [*script, "--steps=run,fetch", f"--local-dir={local}", f"--log-name={p.name}", *dry,
           f"--module={train_module}", *rp.train_args()]
    if dry_run:
      call(cmd, None)
      continue
    tries = 0
    while True:
      tries += 1
      _write_point_file(p, cmd, "tpu", tpu={"name": label, "remote_workdir": remote})
      print(f"[sweep] start {p.name} on {label}" + (f" (retry {tries - 1}/{max_retries})"
                                                   if tries > 1 else ""), flush=True)
      rc = call(cmd, Path(local) / rundir.LOG)
      _merge_fetched_point(p)
      why = _failure(rc, p, f"{rundir.DONE} (none fetched)")
      if why is None or _give_up(rc, tries, max_retries):
        break
      print(f"[sweep] {p.name} failed on {label} ({why}); retrying", flush=True)
    out.append((p, None if why is None else why + (f" after {tries} attempts" if tries > 1 else "")))
  if not keep:
    call([*script, "--steps=delete", *dry], setup_log)
  return out


def run_tpu(points: Sequence[RunPoint], *, launcher_args: Sequence[str] = (),
            train_module: str = DEFAULT_TRAIN_MODULE, dry_run: bool = False,
            remote_root: str | None = None, keep: bool = False,
            tpu_names: Sequence[str] = (), max_retries: int = DEFAULT_MAX_RETRIES,
            result: SweepResult | None = None) -> SweepResult:
  """Runs the points on one or several TPU VMs/pods, fetching results into their workdirs.

  Point i goes to pod i mod P (`tpu_names`, else the `--name=` in
  `launcher_args`); each pod is set up once and runs its share one after
  another, the pods in parallel. A point that fails is retried on its pod up
  to `max_retries` times (it resumes from its checkpoint in the remote workdir).
  """
  result = result or SweepResult()
  todo = [p for p in points if not p.done]
  result.skipped += [p for p in points if p.done]
  if not todo:
    return result
  pods: list[str | None] = list(dict.fromkeys(tpu_names)) or [None]
  if tpu_names and any(a.startswith("--name=") for a in launcher_args):
    raise UserError("name the TPUs either with --tpu_names or with --name= in --launcher_args, "
                    "not both")
  shares = {pod: todo[i::len(pods)] for i, pod in enumerate(pods)}
  root = _common_root(todo)

  def one(pod: str | None) -> list[tuple[RunPoint, str | None]]:
    return _run_pod(pod, shares[pod], launcher_args=launcher_args, train_module=train_module,
                    dry_run=dry_run, remote_root=remote_root, keep=keep, max_retries=max_retries,
                    setup_log=None if dry_run else root / "tpu" / f"{pod or 'tpu'}.log")

  busy = [pod for pod in pods if shares[pod]]
  if dry_run or len(busy) == 1:
    outcomes = [one(pod) for pod in busy]
  else:
    with concurrent.futures.ThreadPoolExecutor(len(busy)) as pool:
      outcomes = list(pool.map(one, busy))
  for outcome in outcomes:
    for p, why in outcome:
      if dry_run:
        continue
      if why is None:
        result.succeeded.append(p)
      else:
        result.failed.append((p, why))
  return result


# --------------------------------------------------------------------------- shared


def run_points(points: Sequence[RunPoint], *, launcher: str = "local", parallel: int = 1,
               dry_run: bool = False, train_module: str = DEFAULT_TRAIN_MODULE,
               launcher_args: Sequence[str] = (), gpus: str | None = None,
               remote_root: str | None = None, tpu_keep: bool = False,
               tpu_names: Sequence[str] = (), max_retries: int = DEFAULT_MAX_RETRIES,
               array_limit: int = DEFAULT_ARRAY_LIMIT) -> SweepResult:
  """Dispatches to the launcher; the entry point shared by `sweep` and `ablate`."""
  if max_retries < 0:
    raise UserError(f"--max_retries={max_retries}: use 0 (never retry) or more")
  if launcher == "local":
    return run_local(points, parallel=parallel, train_module=train_module, gpus=gpus,
                     dry_run=dry_run, max_retries=max_retries)
  if launcher == "slurm":
    return run_slurm(points, launcher_args=launcher_args, train_module=train_module,
                     dry_run=dry_run, array_limit=array_limit, max_retries=max_retries)
  if launcher == "tpu":
    if parallel > 1:
      print("warning: --parallel is ignored with --launcher=tpu (each pod runs its points one "
            "after another; give several pods with --tpu_names)", file=sys.stderr)
    return run_tpu(points, launcher_args=launcher_args, train_module=train_module,
                   dry_run=dry_run, remote_root=remote_root, keep=tpu_keep, tpu_names=tpu_names,
                   max_retries=max_retries)
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


def _names(values: Sequence[str]) -> list[str]:
  return [n for v in values for n in v.split(",") if n]


def runner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """`run_points` keyword arguments from the flags of `add_runner_flags`."""
  return {"launcher": args.launcher, "parallel": args.parallel, "dry_run": args.dry_run,
          "train_module": args.train_module, "launcher_args": shlex.split(args.launcher_args),
          "gpus": args.gpus, "remote_root": args.remote_root, "tpu_keep": args.tpu_keep,
          "tpu_names": _names(args.tpu_names), "max_retries": args.max_retries,
          "array_limit": args.array_limit}


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
  parser.add_argument("--max_retries", "--max-retries", dest="max_retries", type=int,
                      default=DEFAULT_MAX_RETRIES,
                      help="retries of a failed point beyond its first attempt (local/tpu: in "
                           "this call; slurm: counted over calls in point.json)")
  parser.add_argument("--array_limit", "--array-limit", dest="array_limit", type=int,
                      default=DEFAULT_ARRAY_LIMIT,
                      help="slurm launcher: array tasks running at a time (sbatch --array=...%%K)")
  parser.add_argument("--remote_root", "--remote-root", dest="remote_root", default=None,
                      help="tpu launcher: workdir root on the TPU VMs (e.g. gs://bucket/sweep)")
  parser.add_argument("--tpu_names", "--tpu-names", dest="tpu_names", action="append",
                      default=[], metavar="A,B,...",
                      help="tpu launcher: the pods to spread the points over (comma-separated "
                           "or repeated); default: the --name= in --launcher_args")
  parser.add_argument("--tpu_keep", "--tpu-keep", dest="tpu_keep", action="store_true",
                      help="tpu launcher: do not delete the TPUs at the end")
  parser.add_argument("--allow_mixed_commits", "--allow-mixed-commits",
                      dest="allow_mixed_commits", action="store_true",
                      help="tabulate points that ran from different commits (else refused)")
  parser.add_argument("--no_validate", "--no-validate", dest="validate", action="store_false",
                      help="do not build configs to check override keys")
