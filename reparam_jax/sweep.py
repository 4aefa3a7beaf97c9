"""Run every point of a config's sweep, each in its own workdir; resumable.

Usage (from the repository root)::

  python -m reparam_jax.sweep --config=configs/x.py[:arg] --workdir=ROOT \
      [--parallel=N] [--seeds=N] [--dry-run] [--launcher=local|slurm|tpu] \
      [--launcher_args="..."] [--train_module=reparam_jax.train] [--config.a.b=v ...]

The sweep is the config file's ``get_sweep(hyper)`` (``hyper`` is
`reparam_jax.sweeps.hyper`; a config without one is a single point). Each point
runs ``python -m reparam_jax.train --config=... --workdir=ROOT/<name>
--config.k=v ...`` where ``<name>`` is built from the point's overrides, e.g.
``reparam.rank=16,seed=1`` (keys sorted, ``config`` first and ``seed`` last,
characters outside ``[A-Za-z0-9._,=+@-]`` replaced by ``_``; a point with no
overrides is ``base``). ``--config.a.b=v`` given to the sweep applies to every
point and is not part of the names.

Resuming: a point whose workdir holds ``done.json`` is skipped; any other point
is (re-)run in the same workdir, where the trainer resumes from its checkpoint.
Each point's stdout/stderr are appended to ``ROOT/<name>/log.txt``; the
overrides and command are recorded in ``ROOT/<name>/point.json``. Failed points
are listed at the end with their logs and the exit status is 1.

Launchers: ``local`` runs the trainer here (``--parallel=N`` subprocesses;
``--gpus=0,1,2,3`` splits GPUs between them). ``slurm`` submits one job per
point through ``launch/slurm.sh`` and returns; ``tpu`` runs the points one
after another on one TPU VM/pod through ``launch/tpu_pod.sh`` (create, copy,
install once; run and fetch per point; delete at the end unless
``--tpu_keep``). ``--launcher_args`` is passed to the launch script, e.g.
``--launcher_args="--nodes=2 --gpus-per-node=8 --partition=gpu"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import inspect
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.sweeps import hyper

DEFAULT_TRAIN_MODULE = "reparam_jax.train"
LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"
DONE_FILE = "done.json"
LOG_FILE = "log.txt"
POINT_FILE = "point.json"
_MAX_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


# --------------------------------------------------------------------------- points


@dataclasses.dataclass
class RunPoint:
  """One trainer run: a config, its overrides and the workdir they name."""

  name: str
  config: str  # "path.py" or "path.py:arg"
  overrides: dict[str, Any]
  workdir: str
  extra_args: tuple[str, ...] = ()  # sweep-wide --config.x=y, not part of the name

  def train_args(self) -> list[str]:
    """Arguments after `python -m <train module>`."""
    return [f"--config={self.config}", f"--workdir={self.workdir}",
            *(override_flag(k, v) for k, v in self.overrides.items()), *self.extra_args]

  def command(self, train_module: str = DEFAULT_TRAIN_MODULE,
              python: str = sys.executable) -> list[str]:
    return [python, "-m", train_module, *self.train_args()]

  @property
  def done(self) -> bool:
    return is_done(self.workdir)


def is_done(workdir: str | os.PathLike[str]) -> bool:
  return (Path(workdir) / DONE_FILE).exists()


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """`"configs/x.py:arg"` -> (`"configs/x.py"`, `"arg"`), as ml_collections reads it."""
  m = re.match(r"^(.*?\.py)(?::(.*))?$", spec)
  if not m:
    return spec, None
  return m.group(1), m.group(2)


def format_value(value: Any) -> str:
  """A value as the trainer's `--config.k=value` flag parser reads it."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    # ml_collections parses sequences as Python literals; keep them parseable.
    return repr(tuple(value))
  return repr(value)


def override_flag(key: str, value: Any) -> str:
  return f"--config.{key}={format_value(value)}"


def config_label(spec: str) -> str:
  path, arg = split_config_spec(spec)
  p = Path(path)
  parts = list(p.with_suffix("").parts)
  # Configs live under configs/; the rest of the path is unique and short.
  if "configs" in parts:
    parts = parts[len(parts) - parts[::-1].index("configs"):]
  label = ".".join(parts)
  return f"{label}@{arg}" if arg else label


def point_name(overrides: Mapping[str, Any], config: str | None = None) -> str:
  """Stable, filesystem-safe directory name for a point."""
  items: list[tuple[str, str]] = []
  if config is not None:
    items.append((hyper.CONFIG_KEY, config_label(config)))
  keys = sorted(k for k in overrides if k != hyper.SEED_KEY)
  if hyper.SEED_KEY in overrides:
    keys.append(hyper.SEED_KEY)
  items += [(k, format_value(overrides[k])) for k in keys]
  if not items:
    return "base"
  name = _UNSAFE.sub("_", ",".join(f"{k}={v}" for k, v in items))
  if name.startswith("."):  # never a hidden directory, ".", or ".."
    name = "_" + name[1:]
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[:_MAX_NAME - 11]}-{digest}"
  return name


def make_points(sweep: Sequence[Mapping[str, Any]], base_config: str, root: str | os.PathLike[str],
                extra_args: Sequence[str] = ()) -> list[RunPoint]:
  """`RunPoint`s from sweep dicts; identical points are merged, clashing names rejected."""
  extra_keys = {a.split("=", 1)[0][len("--config."):] for a in extra_args}
  out: dict[str, RunPoint] = {}
  for raw in sweep:
    p = {hyper.normalize_key(k): v for k, v in raw.items()}
    config = p.pop(hyper.CONFIG_KEY, None)
    clash = extra_keys & set(p)
    if clash:
      raise UserError(f"--config.{sorted(clash)[0]} is given on the command line and also swept; "
                      "drop one of them")
    name = point_name(p, config)
    rp = RunPoint(name=name, config=config or base_config, overrides=p,
                  workdir=os.path.join(os.fspath(root), name), extra_args=tuple(extra_args))
    if name in out:
      if out[name].overrides != rp.overrides or out[name].config != rp.config:
        raise UserError(f"two different sweep points share the directory name {name!r}; "
                        "make their values distinguishable")
      continue
    out[name] = rp
  return list(out.values())


# --------------------------------------------------------------------------- configs


def load_module(path: str | os.PathLike[str], what: str = "config") -> ModuleType:
  """Imports a Python file by path; a missing file is a one-line `UserError`."""
  return config_load.import_file(str(path), what)


def _call_with_optional_arg(fn: Any, *args: Any, arg: str | None) -> Any:
  n_params = len(inspect.signature(fn).parameters)
  if arg is None and n_params <= len(args):
    return fn(*args)
  if n_params > len(args):
    return fn(*args, arg)
  raise UserError(f"{fn.__module__}.{fn.__name__} takes no config argument, got {arg!r}")


def get_sweep(config_spec: str) -> list[dict[str, Any]]:
  """The config file's `get_sweep(hyper[, arg])`, or one empty point if it has none."""
  path, arg = split_config_spec(config_spec)
  module = load_module(path)
  if not hasattr(module, "get_sweep"):
    return [{}]
  sweep = _call_with_optional_arg(module.get_sweep, sweeps_lib, arg=arg)
  return [dict(p) for p in sweep]


def _has_key(cfg: Any, dotted: str) -> bool:
  node = cfg
  for part in dotted.split("."):
    try:
      if part not in node:
        return False
      node = node[part]
    except TypeError:
      return False
  return True


def validate_points(points: Sequence[RunPoint], source: str = "sweep") -> None:
  """Fails early (one line) on a missing config file or an override key the config lacks.

  Configs that cannot be built here (e.g. they import code that is not written
  yet) are only checked for existence; the trainer checks their keys.
  """
  loaded: dict[str, Any] = {}
  for p in points:
    path, arg = split_config_spec(p.config)
    if not Path(path).is_file():
      raise UserError(f"config file {path} does not exist (needed by {source}, point {p.name})")
    if p.config not in loaded:
      try:
        module = load_module(path)
        loaded[p.config] = _call_with_optional_arg(module.get_config, arg=arg)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        print(f"warning: could not build {p.config} to check its keys ({type(e).__name__}: {e}); "
              "the trainer will check them", file=sys.stderr)
        loaded[p.config] = None
    cfg = loaded[p.config]
    if cfg is None:
      continue
    keys = list(p.overrides) + [a.split("=", 1)[0][len("--config."):] for a in p.extra_args]
    for k in keys:
      if not _has_key(cfg, k):
        raise UserError(f"config {p.config} has no key {k!r} (override from {source}, "
                        f"point {p.name})")


# --------------------------------------------------------------------------- running


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
  (Path(p.workdir) / POINT_FILE).write_text(json.dumps(info, indent=1, default=repr) + "\n")


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
        log = open(Path(p.workdir) / LOG_FILE, "ab")  # pylint: disable=consider-using-with
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
          result.failed.append((p, f"exited 0 but wrote no {DONE_FILE}"))
          print(f"[sweep] FAILED {p.name} (no {DONE_FILE})", flush=True)
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
      with open(Path(p.workdir) / LOG_FILE, "a", encoding="utf-8") as f:
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
    rc = call(cmd, None if dry_run else Path(local) / LOG_FILE)
    if dry_run:
      continue
    if rc != 0:
      result.failed.append((p, f"exit status {rc}"))
    elif not p.done:
      result.failed.append((p, f"no {DONE_FILE} fetched"))
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
    print(f"[sweep] FAILED {p.name}: {why}; log: {os.path.join(p.workdir, LOG_FILE)}")


# --------------------------------------------------------------------------- CLI


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


def split_overrides(unknown: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
  """`--config.a.b=v` pass-through flags; anything else unknown is an error."""
  out = []
  for a in unknown:
    if a.startswith("--config.") and "=" in a:
      out.append(a)
    else:
      parser.error(f"unrecognized argument {a!r} (overrides look like --config.a.b=value)")
  return out


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.sweep", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
  parser.add_argument("--seeds", type=int, default=None,
                      help="repeat every point for seeds 0..N-1 (unless the sweep sets seed)")
  add_runner_flags(parser)
  args, unknown = parser.parse_known_args(argv)
  extra = split_overrides(unknown, parser)
  if not args.workdir:
    parser.error("--workdir is required")
  sweep = get_sweep(args.config)
  if args.seeds:
    sweep = hyper.with_seeds(sweep, args.seeds)
  points = make_points(sweep, args.config, args.workdir, extra)
  if args.validate:
    validate_points(points, source=args.config)
  result = run_points(points, launcher=args.launcher, parallel=args.parallel,
                      dry_run=args.dry_run, train_module=args.train_module,
                      launcher_args=shlex.split(args.launcher_args), gpus=args.gpus,
                      remote_root=args.remote_root, tpu_keep=args.tpu_keep)
  report(result, len(points), args.dry_run)
  return 0 if result.ok else 1


if __name__ == "__main__":
  # Run the imported module, not __main__: experiment and config files import
  # reparam_jax.sweep, and their objects must be of its classes.
  from reparam_jax import sweep as _canonical  # pylint: disable=import-self
  try:
    sys.exit(_canonical.main())
  except KeyboardInterrupt:
    sys.exit(130)
