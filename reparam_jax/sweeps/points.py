"""A sweep's points: one set of config overrides each, named, validated, with its workdir.

A config declares its sweep as `get_sweep(hyper)` (hyper.py); each point runs in
`ROOT/<name>`, the name built from the point's overrides (see `point_name`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps import hyper

DEFAULT_TRAIN_MODULE = "reparam_jax.train"








_MAX_NAME = 200


_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


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
  return rundir.is_done(workdir)


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
  sweep = _call_with_optional_arg(module.get_sweep, hyper, arg=arg)
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


def split_overrides(unknown: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
  """`--config.a.b=v` pass-through flags; anything else unknown is an error."""
  out = []
  for a in unknown:
    if a.startswith("--config.") and "=" in a:
      out.append(a)
    else:
      parser.error(f"unrecognized argument {a!r} (overrides look like --config.a.b=value)")
  return out
