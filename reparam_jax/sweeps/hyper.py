"""Sweep combinators: build lists of config-override points.

A *sweep* is a plain list of dicts; each dict (a *point*) maps dotted config
keys to values, e.g. ``{"reparam.rank": 16, "seed": 1}``. The reserved key
``"config"`` switches the config file of a point (``"configs/lm/x.py"`` or
``"configs/lm/x.py:arg"``), so one sweep can compare different configs.
Keys may carry big_vision's ``config.`` prefix; it is stripped.

A config file declares its sweep next to ``get_config``::

  def get_sweep(hyper):
    return hyper.product(
        hyper.sweep("reparam.rank", [4, 8, 16]),
        hyper.seeds(3),
    )

``hyper`` is this module. Combinators accept sweeps either as separate
arguments or as one list of sweeps (big_vision style), so
``product([a, b])`` and ``product(a, b)`` are the same.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

Point = dict[str, Any]
Sweep = list[Point]

CONFIG_KEY = "config"
SEED_KEY = "seed"


def normalize_key(key: str) -> str:
  """Strips big_vision's `config.` prefix; the bare "config" key is the file switch."""
  if key.startswith("config."):
    return key[len("config."):]
  return key


def _as_sweeps(args: Sequence[Any]) -> list[Sweep]:
  if len(args) == 1 and isinstance(args[0], (list, tuple)) and all(
      isinstance(s, (list, tuple)) for s in args[0]):
    args = tuple(args[0])
  sweeps = []
  for s in args:
    if isinstance(s, Mapping):  # a single point is a one-element sweep
      s = [s]
    if not isinstance(s, (list, tuple)) or not all(isinstance(p, Mapping) for p in s):
      raise TypeError(f"expected a sweep (list of dicts), got {s!r}")
    sweeps.append([{normalize_key(k): v for k, v in p.items()} for p in s])
  return sweeps


def _merge(points: Iterable[Mapping[str, Any]]) -> Point:
  merged: Point = {}
  for p in points:
    for k, v in p.items():
      if k in merged and merged[k] != v:
        raise ValueError(f"sweep key {k!r} set twice in one point ({merged[k]!r} and {v!r})")
      merged[k] = v
  return merged


def sweep(key: str, values: Iterable[Any]) -> Sweep:
  """One point per value of `key`."""
  return [{normalize_key(key): v} for v in values]


def fixed(key: str, value: Any) -> Sweep:
  """A single point setting `key`; combine with `product` to set it everywhere."""
  return [{normalize_key(key): value}]


def point(**overrides: Any) -> Sweep:
  """One point from keyword overrides (use `points` for dotted keys)."""
  return [{normalize_key(k): v for k, v in overrides.items()}]


def points(*pts: Mapping[str, Any]) -> Sweep:
  """An explicit list of points: `points({"a.b": 1}, {"a.b": 2, "c": 3})`."""
  return [{normalize_key(k): v for k, v in p.items()} for p in pts]


def product(*sweeps: Any) -> Sweep:
  """Cartesian product; the last sweep varies fastest."""
  return [_merge(combo) for combo in itertools.product(*_as_sweeps(sweeps))]


def zipit(*sweeps: Any) -> Sweep:
  """Element-wise merge of equally long sweeps (e.g. lr paired with warmup)."""
  ss = _as_sweeps(sweeps)
  lengths = {len(s) for s in ss}
  if len(lengths) > 1:
    raise ValueError(f"zipit needs sweeps of equal length, got lengths {[len(s) for s in ss]}")
  return [_merge(combo) for combo in zip(*ss)]


zip_ = zipit


def chain(*sweeps: Any) -> Sweep:
  """Concatenation: the points of each sweep, one after the other."""
  return [dict(p) for s in _as_sweeps(sweeps) for p in s]


chainit = chain


def seeds(n: int, key: str = SEED_KEY, start: int = 0) -> Sweep:
  """`n` seeds (`start`, ..., `start + n - 1`) under `key`."""
  if n < 1:
    raise ValueError(f"seeds needs n >= 1, got {n}")
  return sweep(key, range(start, start + n))


def with_seeds(s: Sweep, n: int, key: str = SEED_KEY, start: int = 0) -> Sweep:
  """Every point of `s` repeated for `n` seeds (a no-op when `s` sets `key`)."""
  if all(key in p for p in s) and s:
    return s
  return product(s, seeds(n, key=key, start=start))
