"""Ablation tables: run what is missing, then tabulate mean ± std over seeds.

  python -m reparam_jax.ablate experiments/<name>.py [--workdir=ROOT] [--render-only]
      [--parallel=N] [--dry-run] [--launcher=local|slurm|tpu] [--launcher_args="..."]
      [--seeds=N] [--train_module=M] [--config.a.b=v ...]

writes ``ROOT/table.md``, ``table.csv``, ``table.tex``, one PNG per declared
plot (``<y>_vs_<x>.png``) and ``curves.png``. ROOT defaults to
``runs/ablate/<name>``. Points are run through `reparam_jax.sweep` (each in
``ROOT/<point name>``, finished ones skipped), so re-running with every point
done only re-renders; ``--render-only`` never runs anything.

Experiment file format
----------------------
An experiment is a Python file defining ``get_experiment() -> Experiment``::

  from reparam_jax.ablate import Experiment, Metric, Plot

  def get_experiment():
    return Experiment(
        name="lowrank_rank_sweep",
        config="configs/lm/shakespeare_char_lowrank.py",  # base config of every point
        variants={                                         # one table row each, in order
            "dense": {"config": "configs/lm/shakespeare_char.py"},
            **{f"rank {r}": {"reparam.rank": r} for r in (4, 8, 16, 32, 64)},
        },
        seeds=3,                                           # seed = 0, 1, 2 for every variant
        metrics=[Metric("eval/loss", "val loss", fmt=".3f", goal="min"),
                 Metric("params/stored", "stored params", fmt="si"),
                 Metric("train/step_time_ms", "step time (ms)", fmt=".1f")],
        plots=[Plot(x="params/stored", y="eval/loss", logx=True)],
    )

Points: each variant (a dict of config overrides; the key ``"config"`` switches
the config file) merged over ``overrides`` (shared by all points), times
``seeds``. Instead of ``variants``, ``sweep=`` takes a list of override dicts
built with `reparam_jax.sweeps.hyper` combinators; rows are then formed by the
override keys named in ``rows`` (e.g. ``rows=("reparam.rank",)``).

Rows and columns: one row per distinct value of ``rows`` (default
``("variant",)``: the variant label); by default one column per metric. With
``columns="some.key"``, each metric gets one column per value of that key
(a pivot, e.g. rows = method, columns = model size).

Metrics are read from finished points only (those with ``done.json``):
``reduce="auto"`` takes the median over ``metrics.jsonl`` records for timing keys
(containing ``time``: compilation makes the first steps slow), else the value
in ``done.json``, else the last record holding the key (the last eval). Other
reductions: ``final`` (done.json only), ``last``, ``median``, ``mean``,
``min``, ``max``, and ``at_min:<key>`` / ``at_max:<key>``: the value logged at
(or last before) the step where ``<key>`` was best (``step`` gives that step).
A variant's override value ``"{variant:LABEL}"`` is replaced by the workdir of
variant LABEL's point with the same seed (e.g. a distilled student's
``distill.teacher``); such points run after the points they name.

A variant may override the reduction of a metric, e.g.
``Variant({}, reduce={"eval/loss": "min"})`` reads the best eval loss of the
same runs (post-hoc early stopping). Cells are ``mean ± std`` with the sample
standard deviation (ddof=1) over seeds, and ``(n=k/N)`` when only k of N
seeds finished.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from reparam_jax import plot as plot_lib
from reparam_jax import sweep as sweep_lib
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.sweeps import hyper

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
  """A row's overrides, plus per-metric reductions that differ from the experiment's."""

  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  reduce: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Experiment:
  """An ablation: which runs, which metrics, how they form a table (see module doc)."""

  name: str
  metrics: Sequence[Metric | str]
  config: str | None = None
  variants: Mapping[str, Mapping[str, Any] | Variant] | None = None
  sweep: Sequence[Mapping[str, Any]] | None = None
  seeds: int = 1
  seed_key: str = hyper.SEED_KEY
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  rows: Sequence[str] = (VARIANT,)
  columns: str | None = None
  plots: Sequence[Plot] = ()
  curves: Sequence[str] = ("train/loss", "eval/loss")
  description: str = ""

  def __post_init__(self) -> None:
    self.metrics = [m if isinstance(m, Metric) else Metric(m) for m in self.metrics]
    if (self.variants is None) == (self.sweep is None):
      raise UserError(f"experiment {self.name}: give exactly one of variants= and sweep=")
    if self.sweep is not None and tuple(self.rows) == (VARIANT,):
      raise UserError(f"experiment {self.name}: with sweep=, name the row keys in rows=")


@dataclasses.dataclass
class Entry:
  """One (row, column) membership of a run point; a point may serve several rows."""

  point: sweep_lib.RunPoint
  labels: dict[str, Any]  # "variant", override keys and "config": what rows/columns group by
  reduce: Mapping[str, str]


# --------------------------------------------------------------------------- expansion


def load_experiment(path: str | os.PathLike[str]) -> Experiment:
  """`get_experiment()` of an experiment file; a missing file is a one-line error."""
  module = sweep_lib.load_module(path, what="experiment")
  if hasattr(module, "get_experiment"):
    exp = module.get_experiment()
  elif hasattr(module, "EXPERIMENT"):
    exp = module.EXPERIMENT
  else:
    raise UserError(f"{path} defines neither get_experiment() nor EXPERIMENT")
  if not isinstance(exp, Experiment):
    raise UserError(f"{path}: get_experiment() must return reparam_jax.ablate.Experiment")
  return exp


def expand(exp: Experiment, root: str | os.PathLike[str], seeds: int | None = None,
           extra_args: Sequence[str] = ()) -> tuple[list[sweep_lib.RunPoint], list[Entry]]:
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
  points = sweep_lib.make_points(dicts, base or "", root, extra_args)
  by_name = {p.name: p for p in points}
  entries = []
  for d, labels, reduce in entries_raw:
    d = dict(d)
    config = d.pop(hyper.CONFIG_KEY, None)
    p = by_name[sweep_lib.point_name(d, config)]
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


def run_waves(points: Sequence[sweep_lib.RunPoint]) -> list[list[sweep_lib.RunPoint]]:
  """Points in the order they can run: those another point's overrides name come first."""
  workdirs = {p.workdir for p in points}
  needs = {p.name: {v for v in p.overrides.values() if isinstance(v, str) and v in workdirs}
           for p in points}
  first = [p for p in points if not needs[p.name]]
  second = [p for p in points if needs[p.name]]
  needed_late = set().union(*needs.values()) & {p.workdir for p in second}
  if needed_late:
    raise UserError(f"{sorted(needed_late)[0]} is both named by a variant reference and "
                    "itself refers to another variant; chains of references are not supported")
  return [w for w in (first, second) if w]


def check_configs(exp_path: str, points: Sequence[sweep_lib.RunPoint],
                  entries: Sequence[Entry]) -> None:
  """A missing config file is one line naming it (and the row that needs it)."""
  for p in points:
    path, _ = sweep_lib.split_config_spec(p.config)
    if not Path(path).is_file():
      rows = sorted({str(e.labels.get(VARIANT, p.name)) for e in entries if e.point is p})
      raise UserError(f"{exp_path}: config file {path} does not exist "
                      f"(needed by {', '.join(rows)})")


# --------------------------------------------------------------------------- metrics


def _is_timing(key: str) -> bool:
  return "time" in key.split("/")[-1]


def point_metric(workdir: str | os.PathLike[str], key: str, reduce: str = "auto",
                 records: Sequence[dict[str, Any]] | None = None,
                 done: Mapping[str, Any] | None = None) -> float | None:
  """`key` of one finished run, reduced as documented in the module docstring."""
  if done is None:
    done = plot_lib.read_done(workdir)
  if done is None:
    return None
  if records is None:
    records = plot_lib.read_metrics(workdir)
  at = _AT_RE.match(reduce)
  if at:
    return _value_at_best(records, key, at.group(2), at.group(1))
  values = [float(r[key]) for r in records if key in r and _number(r[key]) is not None]
  if reduce == "auto":
    if _is_timing(key) and values:
      reduce = "median"
    elif _number(done.get(key)) is not None:
      reduce = "final"
    else:
      reduce = "last"
  if reduce == "final":
    return _number(done.get(key))
  if not values:
    return None
  if reduce == "last":
    return values[-1]
  fn = {"median": statistics.median, "mean": statistics.fmean, "min": min, "max": max}[reduce]
  return float(fn(values))


def _value_at_best(records: Sequence[dict[str, Any]], key: str, by: str,
                   goal: str) -> float | None:
  # Early stopping reads every metric where `by` was best, not where training ended.
  steps, values = plot_lib.series(records, by)
  if not steps:
    return None
  pick = min if goal == "min" else max
  best_step = steps[values.index(pick(values))]
  if key == "step":
    return best_step
  k_steps, k_values = plot_lib.series(records, key)
  before = [v for s, v in zip(k_steps, k_values) if s <= best_step]
  return before[-1] if before else None


def _number(x: Any) -> float | None:
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return float(x) if math.isfinite(x) else None


@dataclasses.dataclass
class Cell:
  values: list[float]
  expected: int

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float | None:
    return statistics.fmean(self.values) if self.values else None

  @property
  def std(self) -> float | None:
    return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclasses.dataclass
class Table:
  """Everything the renderers need: ordered rows, display columns, cells."""

  exp: Experiment
  row_keys: list[tuple[Any, ...]]
  columns: list[tuple[Metric, Any]]  # (metric, pivot value or None)
  cells: dict[tuple[tuple[Any, ...], Metric, Any], Cell]
  entries: list[Entry]

  def column_name(self, col: tuple[Metric, Any], short: bool = False) -> str:
    metric, value = col
    if self.exp.columns is None:
      return metric.key if short else metric.name
    pivot = f"{self.exp.columns}={_fmt_label(value)}"
    if len(self.exp.metrics) == 1 and not short:
      return pivot
    return f"{metric.key if short else metric.name} @ {pivot}"


def collect(exp: Experiment, entries: Sequence[Entry]) -> Table:
  """Reads every finished point once and groups the values into cells."""
  cache: dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
  row_keys: list[tuple[Any, ...]] = []
  col_values: list[Any] = []
  cells: dict[tuple[tuple[Any, ...], Metric, Any], Cell] = {}
  for e in entries:
    rk = tuple(e.labels.get(k) for k in exp.rows)
    cv = e.labels.get(exp.columns) if exp.columns else None
    if rk not in row_keys:
      row_keys.append(rk)
    if cv not in col_values:
      col_values.append(cv)
    wd = e.point.workdir
    if wd not in cache:
      cache[wd] = (plot_lib.read_metrics(wd), plot_lib.read_done(wd))
    records, done = cache[wd]
    for m in exp.metrics:
      cell = cells.setdefault((rk, m, cv), Cell([], 0))
      cell.expected += 1
      if done is None:
        continue
      v = point_metric(wd, m.key, e.reduce.get(m.key, m.reduce), records, done)
      if v is not None:
        cell.values.append(v)
  columns = [(m, cv) for m in exp.metrics for cv in col_values]
  return Table(exp, row_keys, columns, cells, list(entries))


# --------------------------------------------------------------------------- rendering


def format_number(x: float, fmt: str) -> str:
  if fmt == "si":
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
      if abs(x) >= div:
        return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"
  return format(x, fmt)


def format_cell(cell: Cell | None, metric: Metric, pm: str = " ± ") -> str:
  if cell is None or cell.mean is None:
    return "—"
  text = format_number(cell.mean, metric.fmt)
  if cell.std:  # a 0 spread (e.g. parameter counts) is noise in a table
    text += pm + format_number(cell.std, metric.fmt)
  if cell.n < cell.expected:
    text += f" (n={cell.n}/{cell.expected})"
  return text


def _fmt_label(v: Any) -> str:
  if v is None:
    return "—"
  if isinstance(v, str) and v.endswith(".py"):
    return sweep_lib.config_label(v)
  return str(v)


def _best(table: Table, col: tuple[Metric, Any]) -> tuple[Any, ...] | None:
  metric, cv = col
  if metric.goal is None:
    return None
  means = [(table.cells[(rk, metric, cv)].mean, rk) for rk in table.row_keys
           if (rk, metric, cv) in table.cells and table.cells[(rk, metric, cv)].mean is not None]
  if len(means) < 2:
    return None
  pick = min if metric.goal == "min" else max
  return pick(means, key=lambda t: t[0])[1]


def _footer(table: Table) -> str:
  seeds = {c.expected for c in table.cells.values()}
  n = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}–{max(seeds)}"
  return (f"mean ± sample std (ddof=1) over {n} seed(s); — = no finished run; "
          "(n=k/N) = only k of N seeds finished.")


def render_markdown(table: Table) -> str:
  exp = table.exp
  header = [str(k) for k in exp.rows] + [table.column_name(c) for c in table.columns]
  lines = [f"# {exp.name}", ""]
  if exp.description:
    lines += [exp.description.strip(), ""]
  lines += ["| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * len(exp.rows) + ["---:"] * len(table.columns)) + "|"]
  best = {c: _best(table, c) for c in table.columns}
  for rk in table.row_keys:
    cells = []
    for col in table.columns:
      text = format_cell(table.cells.get((rk, col[0], col[1])), col[0])
      cells.append(f"**{text}**" if best[col] == rk else text)
    lines.append("| " + " | ".join([_fmt_label(v) for v in rk] + cells) + " |")
  lines += ["", _footer(table), ""]
  return "\n".join(lines)


def render_csv(table: Table) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  header = [str(k) for k in table.exp.rows]
  for col in table.columns:
    name = table.column_name(col, short=True)
    header += [f"{name} mean", f"{name} std", f"{name} n"]
  w.writerow(header)
  for rk in table.row_keys:
    row = [_fmt_label(v) for v in rk]
    for metric, cv in table.columns:
      cell = table.cells.get((rk, metric, cv))
      mean = cell.mean if cell else None
      std = cell.std if cell else None
      # 10 significant digits: full precision without float noise (43.79999999999999).
      row += ["" if mean is None else f"{mean:.10g}", "" if std is None else f"{std:.10g}",
              cell.n if cell else 0]
    w.writerow(row)
  return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
  return "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)


def _tex_number(x: float, fmt: str) -> str:
  text = format_number(x, fmt)
  # Inside $...$ a bare "M" would be an italic variable.
  return re.sub(r"([KMBT])$", r"\\,\\mathrm{\1}", text) if fmt == "si" else text


def render_latex(table: Table) -> str:
  exp = table.exp
  spec = "l" * len(exp.rows) + "r" * len(table.columns)
  header = [tex_escape(str(k)) for k in exp.rows] + [tex_escape(table.column_name(c))
                                                    for c in table.columns]
  footer = _footer(table).replace("±", "+-").replace("—", "--")  # ASCII for any TeX engine
  lines = [f"% {tex_escape(exp.name)}: {footer}", "% needs \\usepackage{booktabs}",
           f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(header) + r" \\", "\\midrule"]
  best = {c: _best(table, c) for c in table.columns}
  for rk in table.row_keys:
    cells = []
    for col in table.columns:
      cell = table.cells.get((rk, col[0], col[1]))
      if cell is None or cell.mean is None:
        cells.append("--")
        continue
      mean = _tex_number(cell.mean, col[0].fmt)
      if best[col] == rk:
        mean = f"\\mathbf{{{mean}}}"
      text = mean if not cell.std else f"{mean} \\pm {_tex_number(cell.std, col[0].fmt)}"
      suffix = f" ($n={cell.n}/{cell.expected}$)" if cell.n < cell.expected else ""
      cells.append(f"${text}${suffix}")
    lines.append(" & ".join([tex_escape(_fmt_label(v)) for v in rk] + cells) + r" \\")
  lines += ["\\bottomrule", "\\end{tabular}", ""]
  return "\n".join(lines)


def _safe(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def render_plots(table: Table, root: Path) -> list[Path]:
  """One PNG per `Plot`: row means of y (± std) against x."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  exp = table.exp
  out = []
  for spec in exp.plots:
    from_labels = any(spec.x in e.labels for e in table.entries)
    xs: dict[tuple[Any, ...], list[float]] = {}
    ys: dict[tuple[Any, ...], list[float]] = {}
    for e in table.entries:
      rk = tuple(e.labels.get(k) for k in exp.rows)
      y = point_metric(e.point.workdir, spec.y, e.reduce.get(spec.y, _reduce_of(exp, spec.y)))
      if y is None:
        continue
      ys.setdefault(rk, []).append(y)
      x = _number(e.labels.get(spec.x))
      if x is None:
        x = point_metric(e.point.workdir, spec.x, e.reduce.get(spec.x, _reduce_of(exp, spec.x)))
      if x is not None:
        xs.setdefault(rk, []).append(x)
    if not ys:
      continue
    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rk in enumerate(table.row_keys):
      if rk not in ys:
        continue
      label = ", ".join(_fmt_label(v) for v in rk)
      y_mean = statistics.fmean(ys[rk])
      y_std = statistics.stdev(ys[rk]) if len(ys[rk]) > 1 else 0.0
      color = colors[i % len(colors)]
      if rk in xs:
        x_mean = statistics.fmean(xs[rk])
        ax.errorbar([x_mean], [y_mean], yerr=[y_std], fmt="o", color=color, capsize=3, label=label)
        ax.annotate(label, (x_mean, y_mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
      else:
        ax.axhline(y_mean, color=color, linestyle="--", label=label)
    ax.set_xlabel(spec.x)
    ax.set_ylabel(spec.y)
    if spec.logx:
      ax.set_xscale("log")
    if from_labels and xs:
      # Swept values (e.g. ranks 4..64) are the ticks a reader wants, not powers of 10.
      ticks = sorted({v for vals in xs.values() for v in vals})
      ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
      ax.minorticks_off()
    if spec.logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(exp.name)
    fig.tight_layout()
    path = root / f"{_safe(spec.y)}_vs_{_safe(spec.x)}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    out.append(path)
  return out


def _reduce_of(exp: Experiment, key: str) -> str:
  for m in exp.metrics:
    if isinstance(m, Metric) and m.key == key:
      return m.reduce
  return "auto"


def render(exp: Experiment, entries: Sequence[Entry], root: str | os.PathLike[str]) -> list[Path]:
  """Writes table.{md,csv,tex}, the declared plots and curves.png into `root`."""
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  table = collect(exp, entries)
  written = []
  for name, text in (("table.md", render_markdown(table)), ("table.csv", render_csv(table)),
                     ("table.tex", render_latex(table))):
    (root / name).write_text(text, encoding="utf-8")
    written.append(root / name)
  written += render_plots(table, root)
  if exp.curves:
    # One run per row (its first finished seed) keeps the overlay readable.
    firsts: dict[tuple[Any, ...], Entry] = {}
    for e in entries:
      rk = tuple(e.labels.get(k) for k in exp.rows)
      if rk not in firsts and e.point.done and plot_lib.read_metrics(e.point.workdir):
        firsts[rk] = e
    if firsts:
      try:
        written.append(plot_lib.plot_curves(
            [e.point.workdir for e in firsts.values()], root / "curves.png", list(exp.curves),
            labels=[", ".join(_fmt_label(v) for v in rk) for rk in firsts], title=exp.name))
      except UserError as err:  # e.g. no run logged the curve metrics
        print(f"warning: curves.png not written: {err}", file=sys.stderr)
  return written


# --------------------------------------------------------------------------- CLI


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.ablate", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("experiment", help="experiments/<name>.py")
  parser.add_argument("--render-only", "--render_only", dest="render_only", action="store_true",
                      help="only re-render tables and plots from finished points")
  parser.add_argument("--seeds", type=int, default=None, help="override the experiment's seeds")
  sweep_lib.add_runner_flags(parser)
  args, unknown = parser.parse_known_args(argv)
  extra = sweep_lib.split_overrides(unknown, parser)
  exp = load_experiment(args.experiment)
  root = args.workdir or os.path.join("runs", "ablate", exp.name)
  points, entries = expand(exp, root, args.seeds, extra)
  status = 0
  if not args.render_only:
    check_configs(args.experiment, points, entries)
    if args.validate:
      sweep_lib.validate_points(points, source=args.experiment)
    waves = run_waves(points)
    for i, wave in enumerate(waves):
      result = sweep_lib.run_points(
          wave, launcher=args.launcher, parallel=args.parallel, dry_run=args.dry_run,
          train_module=args.train_module, launcher_args=shlex.split(args.launcher_args),
          gpus=args.gpus, remote_root=args.remote_root, tpu_keep=args.tpu_keep)
      sweep_lib.report(result, len(wave), args.dry_run)
      status = status or (0 if result.ok else 1)
      if result.submitted:
        print(f"[ablate] {len(result.submitted)} points submitted; run the same command again "
              "once they finish to fill the table")
      if i + 1 < len(waves) and not args.dry_run and not all(p.done for p in wave):
        print(f"[ablate] {len(waves[i + 1])} points need results of unfinished points; "
              "run the same command again once those finish")
        break
    if args.dry_run:
      return 0
  written = render(exp, entries, root)
  print((Path(root) / "table.md").read_text(encoding="utf-8"))
  for path in written:
    print(f"[ablate] wrote {path}")
  return status


if __name__ == "__main__":
  # Run the imported module, not __main__: experiment and config files import
  # reparam_jax.ablate, and their objects must be of its classes.
  from reparam_jax import ablate as _canonical  # pylint: disable=import-self
  try:
    sys.exit(_canonical.main())
  except KeyboardInterrupt:
    sys.exit(130)
