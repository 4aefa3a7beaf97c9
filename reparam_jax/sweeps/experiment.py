"""The experiment file schema (`get_experiment() -> Experiment`) and its expansion into sweep points.

An experiment file imports `Experiment`, `Metric`, `Plot`, `Variant` from here;
`python -m reparam_jax.ablate` runs what is missing and tabulates it (tables.py).
The format is in docs/experiments.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from reparam_jax.errors import UserError
from reparam_jax.sweeps import hyper
from reparam_jax.sweeps.budget import Budget
from reparam_jax.sweeps.points import (
  RunPoint,
  load_module,
  make_points,
  point_name,
  split_config_spec,
)
from reparam_jax.sweeps.tuning import Tuning

REDUCTIONS = ("auto", "final", "last", "median", "mean", "min", "max")


_AT_RE = re.compile(r"^at_(min|max):(.+)$")


_VARIANT_REF_RE = re.compile(r"^\{variant:(.+)\}$")


VARIANT = "variant"


@dataclasses.dataclass(frozen=True)
class Metric:
  """A tabulated quantity: `key` in done.json / metrics.jsonl records."""

  key: str
  label: str | None = None
  reduce: str = "auto"
  fmt: str = ".4g"  # a format spec, or "si" for 1.23M-style counts
  goal: str | None = None  # "min" or "max": the best mean is set in bold

  def __post_init__(self) -> None:
    if self.reduce not in REDUCTIONS and not _AT_RE.match(self.reduce):
      raise UserError(f"metric {self.key}: reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
    if self.goal not in (None, "min", "max"):
      raise UserError(f"metric {self.key}: goal must be 'min', 'max' or None")

  @property
  def name(self) -> str:
    return self.label or self.key


@dataclasses.dataclass(frozen=True)
class Plot:
  """A scatter of row means: `y` (a metric key) vs. `x` (a metric key or an override key).

  Rows without an `x` value (e.g. a dense baseline in a rank sweep) are drawn
  as horizontal reference lines.
  """

  x: str
  y: str
  logx: bool = False
  logy: bool = False


@dataclasses.dataclass(frozen=True)
class Variant:
  """A row's overrides, plus per-metric reductions that differ from the experiment's.

  `search` is the row's search space, `{override key: [values]}` (their product
  is the row's settings), chosen on the held-out split of `Experiment.tuning`
  (sweeps/tuning.py). `budget` sizes the row to a budget relative to another
  row instead of a fixed size (sweeps/budget.py).
  """

  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  reduce: Mapping[str, str] = dataclasses.field(default_factory=dict)
  search: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  budget: Budget | None = None


@dataclasses.dataclass
class Experiment:
  """An ablation: which runs, which metrics, how they form a table (see module doc)."""

  name: str
  metrics: Sequence[Metric | str]
  config: str | None = None
  variants: Mapping[str, Mapping[str, Any] | Variant] | None = None
  sweep: Sequence[Mapping[str, Any]] | None = None
  # Seeds 0..k-1 for every row: the same seeds in each row, so comparisons are paired.
  seeds: int = 3
  seed_key: str = hyper.SEED_KEY
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  rows: Sequence[str] = (VARIANT,)
  columns: str | None = None
  plots: Sequence[Plot] = ()
  curves: Sequence[str] = ("train/loss", "eval/loss")
  description: str = ""
  # The row every other row is compared with (paired tests, budgets); None: no comparisons.
  reference: str | None = None
  # How rows with a `Variant.search` choose their setting (sweeps/tuning.py).
  tuning: Tuning | None = None

  def __post_init__(self) -> None:
    self.metrics = [m if isinstance(m, Metric) else Metric(m) for m in self.metrics]
    if (self.variants is None) == (self.sweep is None):
      raise UserError(f"experiment {self.name}: give exactly one of variants= and sweep=")
    if self.sweep is not None and tuple(self.rows) == (VARIANT,):
      raise UserError(f"experiment {self.name}: with sweep=, name the row keys in rows=")
    if self.reference is not None and self.reference not in (self.variants or {}):
      raise UserError(f"experiment {self.name}: reference={self.reference!r} is not a row "
                      f"(variants: {', '.join(map(repr, self.variants or {}))})")


@dataclasses.dataclass
class Entry:
  """One (row, column) membership of a run point; a point may serve several rows."""

  point: RunPoint
  labels: dict[str, Any]  # "variant", override keys and "config": what rows/columns group by
  reduce: Mapping[str, str]


def load_experiment(path: str | os.PathLike[str]) -> Experiment:
  """`get_experiment()` of an experiment file; a missing file is a one-line error."""
  module = load_module(path, what="experiment")
  if hasattr(module, "get_experiment"):
    exp = module.get_experiment()
  elif hasattr(module, "EXPERIMENT"):
    exp = module.EXPERIMENT
  else:
    raise UserError(f"{path} defines neither get_experiment() nor EXPERIMENT")
  if not isinstance(exp, Experiment):
    raise UserError(f"{path}: get_experiment() must return reparam_jax.ablate.Experiment")
  return exp


def select_variants(exp: Experiment, labels: Sequence[str]) -> Experiment:
  """`exp` with only the rows `labels` and the rows they reference (`{variant:...}`).

  Re-running a few rows after a fix (`ablate --variant=LABEL`) keeps the
  other rows' points untouched; a referenced row (a student's teacher) comes
  along because the selected row cannot run without it, and so do the row a
  selected row's budget is relative to and `exp.reference`, the row the
  others are compared with.
  """
  if not labels:
    return exp
  if exp.variants is None:
    raise UserError(f"experiment {exp.name}: --variant selects rows of variants=; "
                    "this experiment has sweep=")
  unknown = [label for label in labels if label not in exp.variants]
  if unknown:
    raise UserError(f"experiment {exp.name}: no variant {unknown[0]!r} "
                    f"(variants: {', '.join(map(repr, exp.variants))})")
  # The reference row comes along too: the selected rows are compared with it.
  wanted = set(labels) | ({exp.reference} if exp.reference else set())
  todo = list(wanted)
  while todo:
    v = exp.variants[todo.pop()]
    needed = []
    for value in (v.overrides if isinstance(v, Variant) else v).values():
      m = _VARIANT_REF_RE.match(value) if isinstance(value, str) else None
      if m:
        needed.append(m.group(1))
    if isinstance(v, Variant) and v.budget is not None:  # its budget is relative to a row
      needed.append(v.budget.relative_to or exp.reference)
    for label in needed:
      if label in exp.variants and label not in wanted:
        wanted.add(label)
        todo.append(label)
  kept = {label: v for label, v in exp.variants.items() if label in wanted}
  return dataclasses.replace(exp, variants=kept)


def expand(exp: Experiment, root: str | os.PathLike[str], seeds: int | None = None,
           extra_args: Sequence[str] = ()) -> tuple[list[RunPoint], list[Entry]]:
  """Unique run points and the table entries that read them."""
  n_seeds = seeds or exp.seeds
  rows: list[tuple[dict[str, Any], dict[str, Any], Mapping[str, str]]] = []
  if exp.variants is not None:
    for label, v in exp.variants.items():
      v = v if isinstance(v, Variant) else Variant(dict(v))
      rows.append(({**exp.overrides, **v.overrides}, {VARIANT: label}, v.reduce))
  else:
    for p in exp.sweep or ():
      rows.append(({**exp.overrides, **p}, {}, {}))
  base = exp.config
  dicts, entries_raw = [], []
  for overrides, labels, reduce in rows:
    overrides = {hyper.normalize_key(k): v for k, v in overrides.items()}
    if hyper.CONFIG_KEY not in overrides and base is None:
      raise UserError(f"experiment {exp.name}: {labels or overrides} has no config; "
                      "set Experiment(config=...) or a 'config' override")
    for s in range(n_seeds) if exp.seed_key not in overrides else [None]:
      d = dict(overrides) if s is None else {**overrides, exp.seed_key: s}
      dicts.append(d)
      entries_raw.append((d, labels, reduce))
  points = make_points(dicts, base or "", root, extra_args)
  by_name = {p.name: p for p in points}
  entries = []
  for d, labels, reduce in entries_raw:
    d = dict(d)
    config = d.pop(hyper.CONFIG_KEY, None)
    p = by_name[point_name(d, config)]
    all_labels = {**d, hyper.CONFIG_KEY: p.config, **labels}
    entries.append(Entry(p, all_labels, reduce))
  _resolve_variant_refs(exp, entries)
  return points, entries


def _resolve_variant_refs(exp: Experiment, entries: Sequence[Entry]) -> None:
  """Replaces `{variant:LABEL}` override values by that variant's workdir (same seed), in place."""
  seed_of = lambda e: e.labels.get(exp.seed_key)  # noqa: E731
  workdir_of = {(e.labels.get(VARIANT), seed_of(e)): e.point.workdir for e in entries}
  for e in entries:
    for key, value in list(e.point.overrides.items()):
      m = _VARIANT_REF_RE.match(value) if isinstance(value, str) else None
      if not m:
        continue
      target = workdir_of.get((m.group(1), seed_of(e)))
      if target is None:
        raise UserError(f"experiment {exp.name}: {key}={value} names no variant "
                        f"{m.group(1)!r} (variants: {', '.join(exp.variants or {})})")
      e.point.overrides[key] = target


def run_waves(points: Sequence[RunPoint]) -> list[list[RunPoint]]:
  """Points in the order they can run: each wave holds the points whose references
  (`{variant:...}`, resolved to workdirs) all name points of earlier waves, so a chain
  (a LoRA run on a trained model, then its compression) runs link by link."""
  workdirs = {p.workdir for p in points}
  needs = {p.name: {v for v in p.overrides.values() if isinstance(v, str) and v in workdirs}
           for p in points}
  waves: list[list[RunPoint]] = []
  done: set[str] = set()
  left = list(points)
  while left:
    wave = [p for p in left if needs[p.name] <= done]
    if not wave:
      raise UserError(f"{left[0].workdir}: its variant references form a cycle "
                      f"({', '.join(sorted(needs[left[0].name]))}); a row cannot "
                      "start from a row that starts from it")
    waves.append(wave)
    done |= {p.workdir for p in wave}
    left = [p for p in left if p not in wave]
  return waves


def check_configs(exp_path: str, points: Sequence[RunPoint],
                  entries: Sequence[Entry]) -> None:
  """A missing config file is one line naming it (and the row that needs it)."""
  for p in points:
    path, _ = split_config_spec(p.config)
    if not Path(path).is_file():
      rows = sorted({str(e.labels.get(VARIANT, p.name)) for e in entries if e.point is p})
      raise UserError(f"{exp_path}: config file {path} does not exist "
                      f"(needed by {', '.join(rows)})")
