"""Where a run came from: commit, dirty flag, config hash, package versions, machine, times.

A sweep point's `point.json` (written first by the launcher: name, config,
overrides, command) gains a `"provenance"` block when the trainer starts
(`record_start`) and its end time and status when it stops (`record_end`),
so an ablation table can tell which code produced each of its points and
refuse to mix commits (`check_one_commit`) unless told to.

Everything here is cheap and runs once per trainer start: git is asked
twice (commit, status) and the answer cached for the process; jax is
consulted only if something else already imported it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from etils import epath

from reparam_jax.errors import UserError
from reparam_jax.rundir.files import atomic_write

POINT = "point.json"  # the same name as rundir.workdir.POINT (not imported: that pulls in jax)
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# Code copied to a machine without its .git (launch/tpu_pod.sh --code=scp) carries this file.
REVISION_FILE = "REVISION.json"
UNKNOWN = "unknown"  # how points without provenance (older runs) are listed
CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout this package runs from


def now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _git(repo: Path, *args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=False, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout if out.returncode == 0 else None


@functools.cache
def git_state(repo: str | os.PathLike[str] = CODE_ROOT) -> tuple[str | None, bool | None]:
  """(commit, dirty) of the checkout at `repo`; (None, None) outside git.

  Dirty means a tracked file differs from the commit (untracked files, e.g.
  run folders, do not count). Code copied without `.git` may carry
  `REVISION.json` ({"commit": ..., "dirty": ...}) written where it was copied from.
  """
  repo = Path(repo).resolve()
  out = _git(repo, "rev-parse", "--show-toplevel", "HEAD")
  lines = out.split() if out else []
  # A copy of the code inside some other repository is not that repository's commit.
  commit = lines[1] if len(lines) == 2 and Path(lines[0]).resolve() == repo else None
  if commit is None:
    revision = repo / REVISION_FILE
    if revision.is_file():
      try:
        data = json.loads(revision.read_text(encoding="utf-8"))
        return data.get("commit"), data.get("dirty")
      except (OSError, json.JSONDecodeError):
        pass
    return None, None
  status = _git(repo, "status", "--porcelain", "--untracked-files=no")
  return commit, (None if status is None else bool(status.strip()))


def _plain(config: Any) -> Any:
  if config is None:
    return None
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    return config.to_dict()
  return config


def config_hash(config: Any) -> str | None:
  """sha256 of the config's canonical JSON (sorted keys): equal configs, equal hashes."""
  plain = _plain(config)
  if plain is None:
    return None
  text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def package_versions() -> dict[str, str | None]:
  versions: dict[str, str | None] = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  versions["python"] = platform.python_version()
  return versions


@functools.cache
def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def machine() -> dict[str, Any]:
  """Host, OS, CPU and (when jax is already imported, never importing it) the devices."""
  info: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform(),
                          "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
  for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
    if os.environ.get(var):
      info[var.lower()] = os.environ[var]
  jax = sys.modules.get("jax")
  if jax is not None:
    try:
      devices = jax.devices()
      info["device_kinds"] = sorted({d.device_kind for d in devices})
      info["device_count"] = len(devices)
      info["process_count"] = jax.process_count()
    except RuntimeError as e:  # no backend: provenance never fails a run
      info["devices_error"] = str(e).splitlines()[0][:200]
  return info


def collect(config: Any = None, repo: str | os.PathLike[str] = CODE_ROOT) -> dict[str, Any]:
  """The provenance block: commit, dirty, config_hash, packages, machine."""
  commit, dirty = git_state(repo)
  return {"commit": commit, "dirty": dirty, "config_hash": config_hash(config),
          "packages": package_versions(), "machine": machine()}


# --------------------------------------------------------------------------- point.json


def _is_remote(workdir: str | os.PathLike[str]) -> bool:
  """A bucket path (gs://, s3://): os.open would make a local folder named 'gs:'."""
  return "://" in os.fspath(workdir)


def read_point(workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """The point's `point.json` ({} when absent or unreadable: a torn file is not fatal)."""
  try:
    if _is_remote(workdir):
      data = json.loads(epath.Path(os.fspath(workdir), POINT).read_text())
    else:
      with open(os.path.join(os.fspath(workdir), POINT), encoding="utf-8") as f:
        data = json.load(f)
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) else {}


def update_point(workdir: str | os.PathLike[str], fields: Mapping[str, Any]) -> dict[str, Any]:
  """Merges `fields` into `point.json` (keeping every other key) with an atomic replace."""
  info = {**read_point(workdir), **fields}
  text = json.dumps(info, indent=1, default=repr) + "\n"
  if _is_remote(workdir):  # gs://...: the object store replaces an object whole
    epath.Path(os.fspath(workdir)).mkdir(parents=True, exist_ok=True)
    epath.Path(os.fspath(workdir), POINT).write_text(text)
    return info
  os.makedirs(workdir, exist_ok=True)
  atomic_write(os.path.join(os.fspath(workdir), POINT), text)
  return info


def _is_main(process_index: int | None) -> bool:
  if process_index is None:
    jax = sys.modules.get("jax")
    process_index = jax.process_index() if jax is not None else 0
  return process_index == 0


def record_start(workdir: str | os.PathLike[str], config: Any = None,
                 process_index: int | None = None) -> dict[str, Any] | None:
  """Called by the trainer as it starts (or resumes) in `workdir`; only process 0 writes.

  Sets `provenance` (this start's), `start` (the first start of the point),
  `status: "running"`, `end: None`, counts `starts` (a resume after a
  preemption is another start, not a launcher attempt) and appends one
  entry to `history`, so a point resumed under different code shows it.
  """
  if not _is_main(process_index):
    return None
  info = read_point(workdir)
  prov = collect(config)
  stamp = now()
  history = list(info.get("history") or [])
  history.append({"start": stamp, "end": None, "status": "running", "commit": prov["commit"],
                  "dirty": prov["dirty"], "host": prov["machine"]["hostname"]})
  return update_point(workdir, {
      "provenance": prov, "start": info.get("start") or stamp, "end": None, "status": "running",
      "starts": int(info.get("starts") or 0) + 1, "history": history})


def record_end(workdir: str | os.PathLike[str], status: str,
               process_index: int | None = None) -> dict[str, Any] | None:
  """Called by the trainer as it stops: status is "done", "preempted" or "failed"."""
  if not _is_main(process_index):
    return None
  info = read_point(workdir)
  stamp = now()
  history = list(info.get("history") or [])
  if history and history[-1].get("end") is None:
    history[-1] = {**history[-1], "end": stamp, "status": status}
  return update_point(workdir, {"end": stamp, "status": status, "history": history})


# --------------------------------------------------------------------------- mixed commits


def commit_of(workdir: str | os.PathLike[str]) -> str | None:
  """The commit the point's trainer recorded; None for points without provenance."""
  prov = read_point(workdir).get("provenance")
  return prov.get("commit") if isinstance(prov, dict) else None


def commits_of(workdirs: Iterable[str | os.PathLike[str]]) -> dict[str | None, list[str]]:
  """commit -> the workdirs it produced (None: no provenance, e.g. runs older than it)."""
  out: dict[str | None, list[str]] = {}
  for wd in workdirs:
    out.setdefault(commit_of(wd), []).append(os.fspath(wd))
  return out


def _dirty(workdir: str) -> bool:
  prov = read_point(workdir).get("provenance")
  return isinstance(prov, dict) and bool(prov.get("dirty"))


def check_one_commit(workdirs: Iterable[str | os.PathLike[str]], allow_mixed: bool = False) -> None:
  """Refuses (UserError) a table whose points come from more than one known commit.

  Points without provenance are listed as "unknown" but never trigger the
  refusal on their own: a table of older runs plus one commit still renders.
  Points run from a dirty checkout are named in a warning. With
  `allow_mixed` the refusal becomes a warning.
  """
  by_commit = commits_of(workdirs)
  known = sorted(((c, wds) for c, wds in by_commit.items() if c is not None),
                 key=lambda item: (-len(item[1]), item[0]))
  parts = [f"{c[:7]}: {len(wds)} point{'s' * (len(wds) != 1)}" for c, wds in known]
  if None in by_commit:
    n = len(by_commit[None])
    parts.append(f"{UNKNOWN} (no provenance): {n} point{'s' * (n != 1)}")
  dirty = [wd for wds in by_commit.values() for wd in wds if _dirty(wd)]
  if dirty:
    print(f"warning: {len(dirty)} points ran from a checkout with uncommitted changes "
          f"(e.g. {os.path.basename(dirty[0])}); their commit does not pin their code",
          file=sys.stderr)
  if len(known) <= 1:
    if None in by_commit and known:
      print(f"warning: points of this table: {', '.join(parts)}", file=sys.stderr)
    return
  message = (f"points of this table come from {len(known)} commits ({', '.join(parts)}); "
             "re-run the stale points or pass --allow_mixed_commits")
  if not allow_mixed:
    raise UserError(message)
  print(f"warning: {message.split(';')[0]} (allowed by --allow_mixed_commits)", file=sys.stderr)
