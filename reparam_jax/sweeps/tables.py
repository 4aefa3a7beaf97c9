"""Ablation tables: collect each point's metric, mean ± std over seeds, render Markdown/CSV/LaTeX.

With `Experiment.reference`, every goal metric gets a Δ-vs-reference column:
a paired test per row (a bootstrap over seeds and examples where runs wrote
eval_examples.npz for that metric, else a t-test over shared seeds; stats.py),
marked NOT_SIGNIFICANT where the 95% interval contains 0. `table_view` is the
format-independent table every renderer (Markdown, LaTeX, HTML) draws.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps import stats
from reparam_jax.sweeps.experiment import _AT_RE, Entry, Experiment, Metric
from reparam_jax.sweeps.plots import plot_curves, series
from reparam_jax.sweeps.points import config_label


def _is_timing(key: str) -> bool:
  return "time" in key.split("/")[-1]


def point_metric(workdir: str | os.PathLike[str], key: str, reduce: str = "auto",
                 records: Sequence[dict[str, Any]] | None = None,
                 done: Mapping[str, Any] | None = None) -> float | None:
  """`key` of one finished run, reduced as documented in the module docstring."""
  if done is None:
    done = rundir.read_done(workdir)
  if done is None:
    return None
  if records is None:
    records = rundir.read_metrics(workdir)
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
  steps, values = series(records, by)
  if not steps:
    return None
  pick = min if goal == "min" else max
  best_step = steps[values.index(pick(values))]
  if key == "step":
    return best_step
  k_steps, k_values = series(records, key)
  before = [v for s, v in zip(k_steps, k_values) if s <= best_step]
  return before[-1] if before else None


def _number(x: Any) -> float | None:
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return float(x) if math.isfinite(x) else None


# Metric key -> the per-example array of `eval_examples.npz` whose mean it is: those
# metrics are compared by a paired bootstrap over the seeds and evaluation examples.
PER_EXAMPLE: dict[str, str] = {"eval/accuracy": "correct"}

# The one mark for a difference whose 95% interval contains 0, in every format.
NOT_SIGNIFICANT = "n.s."
UNTESTED = "(untested)"
REFERENCE = "reference"
# Per-example arrays are the final evaluation's: only reductions that read it may use them.
_FINAL_REDUCTIONS = ("auto", "final")


@dataclasses.dataclass
class Cell:
  """One (row, column)'s finished values, one per seed, with what pairs them across rows."""

  values: list[float]
  expected: int
  seeds: list[Any] = dataclasses.field(default_factory=list)  # parallel to values
  # Per-example scores of each value's run (PER_EXAMPLE), None where a run has none.
  examples: list[np.ndarray | None] = dataclasses.field(default_factory=list)

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float | None:
    return statistics.fmean(self.values) if self.values else None

  @property
  def std(self) -> float | None:
    return statistics.stdev(self.values) if len(self.values) > 1 else None

  @property
  def summary(self) -> stats.Summary:
    return stats.summary(self.values)


@dataclasses.dataclass(frozen=True)
class RowComparison:
  """A row against the reference row in one column: the test on the seeds both finished.

  `partial` is True when either row finished seeds the other did not, so the
  difference is over `seeds` only, not over the rows' whole means.
  """

  comparison: stats.Comparison
  seeds: list[Any]
  partial: bool


CellKey = tuple[tuple[Any, ...], Metric, Any]


@dataclasses.dataclass
class Table:
  """Everything the renderers need: ordered rows, display columns, cells, comparisons."""

  exp: Experiment
  row_keys: list[tuple[Any, ...]]
  columns: list[tuple[Metric, Any]]  # (metric, pivot value or None)
  cells: dict[CellKey, Cell]
  entries: list[Entry]
  reference: tuple[Any, ...] | None = None  # the row key of exp.reference, if in the table
  comparisons: dict[CellKey, RowComparison | None] = dataclasses.field(default_factory=dict)

  def column_name(self, col: tuple[Metric, Any], short: bool = False) -> str:
    metric, value = col
    if self.exp.columns is None:
      return metric.key if short else metric.name
    pivot = f"{self.exp.columns}={_fmt_label(value)}"
    if len(self.exp.metrics) == 1 and not short:
      return pivot
    return f"{metric.key if short else metric.name} @ {pivot}"

  def row_label(self, rk: tuple[Any, ...]) -> str:
    return ", ".join(_fmt_label(v) for v in rk)

  def compared(self, col: tuple[Metric, Any]) -> bool:
    """Whether `col` gets a Δ-vs-reference column: goal metrics, when a reference is set."""
    return self.exp.reference is not None and col[0].goal is not None


def _per_example(wd: str, metric: Metric, reduce: str, value: float,
                 done: Mapping[str, Any]) -> np.ndarray | None:
  """The run's per-example scores whose mean is `value`, or None if it has none that match."""
  name = PER_EXAMPLE.get(metric.key)
  if name is None or reduce not in _FINAL_REDUCTIONS or _number(done.get(metric.key)) is None:
    return None
  arrays = rundir.read_eval_examples(wd)
  if not arrays or name not in arrays or np.asarray(arrays[name]).size == 0:
    return None
  scores = np.asarray(arrays[name], dtype=np.float64).ravel()
  # Arrays of another evaluation (a subset, a different checkpoint) would test the wrong thing.
  if abs(float(scores.mean()) - value) > 1e-4:
    return None
  return scores


def collect(exp: Experiment, entries: Sequence[Entry]) -> Table:
  """Reads every finished point once, groups the values into cells, compares with the reference."""
  cache: dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
  row_keys: list[tuple[Any, ...]] = []
  col_values: list[Any] = []
  cells: dict[CellKey, Cell] = {}
  for i, e in enumerate(entries):
    rk = tuple(e.labels.get(k) for k in exp.rows)
    cv = e.labels.get(exp.columns) if exp.columns else None
    if rk not in row_keys:
      row_keys.append(rk)
    if cv not in col_values:
      col_values.append(cv)
    wd = e.point.workdir
    if wd not in cache:
      cache[wd] = (rundir.read_metrics(wd), rundir.read_done(wd))
    records, done = cache[wd]
    seed = e.labels.get(exp.seed_key, i)
    for m in exp.metrics:
      cell = cells.setdefault((rk, m, cv), Cell([], 0))
      cell.expected += 1
      if done is None:
        continue
      reduce = e.reduce.get(m.key, m.reduce)
      v = point_metric(wd, m.key, reduce, records, done)
      if v is not None:
        cell.values.append(v)
        cell.seeds.append(seed)
        wants_examples = exp.reference is not None and m.goal is not None
        cell.examples.append(_per_example(wd, m, reduce, v, done) if wants_examples else None)
  columns = [(m, cv) for m in exp.metrics for cv in col_values]
  table = Table(exp, row_keys, columns, cells, list(entries))
  table.reference = next((rk for rk in row_keys if table.row_label(rk) == exp.reference), None)
  if table.reference is not None:
    for col in columns:
      if not table.compared(col):
        continue
      ref = cells.get((table.reference, col[0], col[1]))
      for rk in row_keys:
        cell = cells.get((rk, col[0], col[1]))
        if rk != table.reference and cell is not None and ref is not None:
          table.comparisons[(rk, col[0], col[1])] = compare_cells(cell, ref)
  return table


def _paired_keys(seeds: Sequence[Any]) -> list[tuple[Any, int]]:
  # (seed, k-th occurrence): rows that group several points under one seed still pair up.
  seen: dict[Any, int] = {}
  keys = []
  for s in seeds:
    keys.append((s, seen.get(s, 0)))
    seen[s] = seen.get(s, 0) + 1
  return keys


def compare_cells(row: Cell, ref: Cell,
                  n_resamples: int = stats.BOOTSTRAP_RESAMPLES) -> RowComparison | None:
  """`row` − `ref` on the seeds both finished: a bootstrap over those seeds and the examples
  where both rows have per-example scores of the same length at every shared seed, else a
  t-test over seeds. None when no seed finished in both."""
  row_at = dict(zip(_paired_keys(row.seeds), range(row.n)))
  ref_at = dict(zip(_paired_keys(ref.seeds), range(ref.n)))
  shared = [k for k in row_at if k in ref_at]
  if not shared:
    return None
  partial = len(shared) != len(row_at) or len(shared) != len(ref_at)
  seeds = [k[0] for k in shared]
  a_ex = [row.examples[row_at[k]] if row.examples else None for k in shared]
  b_ex = [ref.examples[ref_at[k]] if ref.examples else None for k in shared]
  sizes = {x.size for x in a_ex + b_ex if x is not None}
  if all(x is not None for x in a_ex + b_ex) and len(sizes) == 1:
    comparison = stats.paired_bootstrap(np.stack(a_ex), np.stack(b_ex), n_resamples=n_resamples)
  else:
    comparison = stats.paired_seeds([row.values[row_at[k]] for k in shared],
                                    [ref.values[ref_at[k]] for k in shared])
  return RowComparison(comparison, seeds, partial)

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
    return config_label(v)
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


def _minus(text: str) -> str:
  """A typographic minus for a leading "-" (a hyphen reads as a dash in a table)."""
  return "−" + text[1:] if text.startswith("-") else text


def _signed(x: float, fmt: str) -> str:
  """A difference with its sign always shown."""
  text = format_number(x, fmt)
  return _minus(text) if text.startswith("-") or float(x) == 0 else "+" + text


def _tex_signed(x: float, fmt: str) -> str:
  text = _tex_number(x, fmt)
  return text if text.startswith("-") or float(x) == 0 else "+" + text


def _seed_list(seeds: Sequence[Any]) -> str:
  return ", ".join(str(s) for s in seeds)


def _shows_interval(table: Table, col: tuple[Metric, Any]) -> bool:
  # A 95% column only for goal metrics, and only once some row has 2+ seeds to spread.
  return col[0].goal is not None and any(
      table.cells[(rk, col[0], col[1])].n >= 2 for rk in table.row_keys
      if (rk, col[0], col[1]) in table.cells)


def _extra_names(table: Table, extra_columns: Mapping[str, Mapping[str, str]] | None) -> list[str]:
  names: list[str] = []
  for rk in table.row_keys:
    for name in (extra_columns or {}).get(table.row_label(rk), {}):
      if name not in names:
        names.append(name)
  return names


@dataclasses.dataclass
class TableView:
  """The table as cell texts, shared by the Markdown, LaTeX and HTML renderers.

  `headers`/`rows` hold every column: the row-key columns, the extra columns
  (`label_columns` in all), then per metric column its value ("mean ± std"),
  for goal metrics its 95% interval and, with a reference row, the Δ column
  whose not-significant entries carry NOT_SIGNIFICANT. `best` holds the
  (row, column) indexes to set in bold; `notes` the footnotes explaining the
  seeds, intervals, tests and marks. `tex_headers`/`tex_rows` are the same
  cells typeset for LaTeX (math mode, escapes); `align` is "l" or "r" per column.
  """

  headers: list[str]
  rows: list[list[str]]
  row_labels: list[str]
  best: set[tuple[int, int]]
  notes: list[str]
  align: list[str] = dataclasses.field(default_factory=list)
  label_columns: int = 0
  tex_headers: list[str] = dataclasses.field(default_factory=list)
  tex_rows: list[list[str]] = dataclasses.field(default_factory=list)


def _value_texts(cell: Cell | None, metric: Metric, bold: bool) -> tuple[str, str]:
  if cell is None or cell.mean is None:
    return "—", "--"
  text = format_cell(cell, metric)
  mean = _tex_number(cell.mean, metric.fmt)
  if bold:
    mean = f"\\mathbf{{{mean}}}"
  tex = mean if not cell.std else f"{mean} \\pm {_tex_number(cell.std, metric.fmt)}"
  suffix = f" ($n={cell.n}/{cell.expected}$)" if cell.n < cell.expected else ""
  return text, f"${tex}${suffix}"


def _interval_texts(cell: Cell | None, metric: Metric) -> tuple[str, str]:
  s = cell.summary if cell is not None else None
  if s is None or s.ci_low is None or s.ci_high is None:
    return "—", "--"
  lo, hi = format_number(s.ci_low, metric.fmt), format_number(s.ci_high, metric.fmt)
  tex_lo, tex_hi = _tex_number(s.ci_low, metric.fmt), _tex_number(s.ci_high, metric.fmt)
  return f"[{_minus(lo)}, {_minus(hi)}]", f"$[{tex_lo}, {tex_hi}]$"


def _delta_texts(table: Table, rk: tuple[Any, ...], col: tuple[Metric, Any]) -> tuple[str, str]:
  if rk == table.reference:
    return REFERENCE, REFERENCE
  rc = table.comparisons.get((rk, col[0], col[1]))
  if rc is None:
    return "—", "--"
  c, fmt = rc.comparison, col[0].fmt
  text, tex = _signed(c.diff, fmt), _tex_signed(c.diff, fmt)
  if c.ci_low is not None and c.ci_high is not None:
    text += f" [{_signed(c.ci_low, fmt)}, {_signed(c.ci_high, fmt)}]"
    tex += f"\\ [{_tex_signed(c.ci_low, fmt)}, {_tex_signed(c.ci_high, fmt)}]"
  tex = f"${tex}$"
  mark = NOT_SIGNIFICANT if c.significant is False else UNTESTED if not c.testable else ""
  if mark:
    text, tex = f"{text} {mark}", f"{tex} {mark}"
  if rc.partial:
    on = f" (on seeds {_seed_list(rc.seeds)})"
    text, tex = text + on, tex + on
  return text, tex


def _notes(table: Table, shown_intervals: bool) -> list[str]:
  exp = table.exp
  expected = {c.expected for c in table.cells.values()}
  n = "0" if not expected else (f"{min(expected)}" if len(expected) == 1
                                else f"{min(expected)}–{max(expected)}")
  seeds = sorted({s for c in table.cells.values() for s in c.seeds}, key=str)
  which = f" (seeds {_seed_list(seeds)})" if seeds and exp.seed_key in (
      k for e in table.entries for k in e.labels) else ""
  notes = [(f"mean ± sample std (ddof=1) over {n} seed(s){which}; — = no finished run; "
            "(n=k/N) = only k of N seeds finished.")]
  if shown_intervals:
    notes.append("95% CI = Student-t 95% interval of the mean over the finished seeds.")
  if exp.reference is None:
    return notes
  if table.reference is None:
    notes.append(f"reference row {exp.reference!r} is not in this table: no comparisons.")
    return notes
  # test description -> column -> rows it was used for
  tests: dict[str, dict[str, list[str]]] = {}
  methods_of: dict[str, set[str]] = {}
  flags = {"n.s.": False, "untested": False, "partial": False}
  for (rk, metric, cv), rc in table.comparisons.items():
    if rc is None:
      continue
    c = rc.comparison
    name = table.column_name((metric, cv))
    if c.method == stats.MULTI_BOOTSTRAP:
      what = (f"paired bootstrap over the shared seeds and the {c.n} evaluation examples "
              f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, each drawing seeds and examples with "
              "replacement; Sellam et al. 2022)")
    elif c.method == stats.BOOTSTRAP:
      what = (f"paired bootstrap over the {c.n} evaluation examples "
              f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, one shared seed)")
    elif c.method == stats.SEED_T_TEST:
      what = "paired t-test over the seeds both rows finished"
    else:
      what = None
    if what is not None:
      tests.setdefault(what, {}).setdefault(name, []).append(table.row_label(rk))
      methods_of.setdefault(name, set()).add(what)
    flags["n.s."] |= c.significant is False
    flags["untested"] |= not c.testable
    flags["partial"] |= rc.partial
  parts = []
  for what, columns in tests.items():
    # A column whose rows used different tests names the rows of each.
    names = [name if len(methods_of[name]) == 1 else f"{name} ({', '.join(rows)})"
             for name, rows in columns.items()]
    parts.append(f"{', '.join(names)}: {what}")
  tested = any(rc is not None and rc.comparison.testable for rc in table.comparisons.values())
  text = (f"Δ = row − {exp.reference} (means over the seeds both finished)"
          + (" with its 95% interval" if tested else ""))
  if parts:
    text += "; " + "; ".join(parts)
  notes.append(text + ".")
  if flags["n.s."]:
    notes.append(f"{NOT_SIGNIFICANT} = not significant at 95% (the interval contains 0).")
  if flags["untested"]:
    notes.append(f"{UNTESTED} = one shared seed and no per-example results: no test; "
                 "run more seeds.")
  if flags["partial"]:
    notes.append("(on seeds …) = the two rows finished different seeds; compared on the "
                 "seeds both finished.")
  return notes


def table_view(table: Table, exp: Experiment | None = None,
               extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> TableView:
  """The format-independent table (see TableView); `extra_columns` maps a row label to
  {column name: text} shown after the row label (a tuner's chosen values, a budget)."""
  exp = exp or table.exp
  extras = _extra_names(table, extra_columns)
  headers = [str(k) for k in exp.rows] + extras
  tex_headers = [_tex_text(h) for h in headers]
  align = ["l"] * len(headers)
  layout: list[tuple[str, tuple[Metric, Any]]] = []
  shown_intervals = False
  for col in table.columns:
    name = table.column_name(col)
    layout.append(("value", col))
    headers.append(name)
    if _shows_interval(table, col):
      shown_intervals = True
      layout.append(("interval", col))
      headers.append(f"{name} 95% CI")
    if table.compared(col):
      layout.append(("delta", col))
      headers.append(f"Δ {name} vs {exp.reference}")
  tex_headers += [_tex_text(h) for h in headers[len(tex_headers):]]
  align += ["r"] * len(layout)
  best_of = {c: _best(table, c) for c in table.columns}
  rows, tex_rows, labels, best = [], [], [], set()
  for i, rk in enumerate(table.row_keys):
    label = table.row_label(rk)
    given = (extra_columns or {}).get(label, {})
    row = [_fmt_label(v) for v in rk] + [str(given.get(name, "")) for name in extras]
    tex_row = [_tex_text(t) for t in row]
    for kind, col in layout:
      cell = table.cells.get((rk, col[0], col[1]))
      if kind == "value":
        is_best = best_of[col] == rk
        text, tex = _value_texts(cell, col[0], is_best)
        if is_best:
          best.add((i, len(row)))
      elif kind == "interval":
        text, tex = _interval_texts(cell, col[0])
      else:
        text, tex = _delta_texts(table, rk, col)
      row.append(text)
      tex_row.append(tex)
    rows.append(row)
    tex_rows.append(tex_row)
    labels.append(label)
  return TableView(headers, rows, labels, best, _notes(table, shown_intervals), align,
                   len(exp.rows) + len(extras), tex_headers, tex_rows)


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|")


def render_markdown(table: Table,
                    extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  exp = table.exp
  view = table_view(table, exp, extra_columns)
  lines = [f"# {exp.name}", ""]
  if exp.description:
    lines += [exp.description.strip(), ""]
  lines += ["| " + " | ".join(_md_cell(h) for h in view.headers) + " |",
            "|" + "|".join("---:" if a == "r" else "---" for a in view.align) + "|"]
  for i, row in enumerate(view.rows):
    cells = [f"**{_md_cell(t)}**" if (i, j) in view.best else _md_cell(t)
             for j, t in enumerate(row)]
    lines.append("| " + " | ".join(cells) + " |")
  for note in view.notes:  # one paragraph each: consecutive lines would run together
    lines += ["", note]
  lines.append("")
  return "\n".join(lines)


def _csv_number(x: float | None) -> str:
  # 10 significant digits: full precision without float noise (43.79999999999999).
  return "" if x is None else f"{x:.10g}"


def render_csv(table: Table, extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """Numbers at full precision for scripts: per column mean, std, n; for goal metrics the
  95% interval; with a reference row the Δ, its interval, p, test, seeds and mark."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  extras = _extra_names(table, extra_columns)
  header = [str(k) for k in table.exp.rows] + extras
  for col in table.columns:
    name = table.column_name(col, short=True)
    header += [f"{name} mean", f"{name} std", f"{name} n"]
    if col[0].goal is not None:
      header += [f"{name} ci_low", f"{name} ci_high"]
    if table.compared(col):
      header += [f"{name} delta", f"{name} delta ci_low", f"{name} delta ci_high",
                 f"{name} delta p", f"{name} delta test", f"{name} delta seeds",
                 f"{name} delta mark"]
  w.writerow(header)
  g = _csv_number
  for rk in table.row_keys:
    given = (extra_columns or {}).get(table.row_label(rk), {})
    row: list[Any] = [_fmt_label(v) for v in rk] + [str(given.get(n, "")) for n in extras]
    for col in table.columns:
      metric, cv = col
      cell = table.cells.get((rk, metric, cv))
      row += [g(cell.mean if cell else None), g(cell.std if cell else None),
              cell.n if cell else 0]
      if metric.goal is not None:
        s = cell.summary if cell else None
        row += [g(s.ci_low if s else None), g(s.ci_high if s else None)]
      if table.compared(col):
        rc = table.comparisons.get((rk, metric, cv))
        if rk == table.reference:
          row += ["", "", "", "", REFERENCE, "", ""]
        elif rc is None:
          row += [""] * 7
        else:
          c = rc.comparison
          mark = NOT_SIGNIFICANT if c.significant is False else UNTESTED if not c.testable else ""
          row += [g(c.diff), g(c.ci_low), g(c.ci_high), g(c.p), c.method,
                  " ".join(str(s) for s in rc.seeds), mark]
    w.writerow(row)
  return buf.getvalue()


def render_seeds_csv(table: Table) -> str:
  """Every finished run's value, one line per (row, column, metric, seed): what each mean ± std
  of the table is made of, for a reader who wants the seeds themselves."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  pivot = [str(table.exp.columns)] if table.exp.columns else []
  w.writerow([str(k) for k in table.exp.rows] + pivot + ["metric", "seed", "value"])
  for rk in table.row_keys:
    for metric, cv in table.columns:
      cell = table.cells.get((rk, metric, cv))
      for seed, value in zip(cell.seeds, cell.values) if cell else ():
        w.writerow([_fmt_label(v) for v in rk] + ([_fmt_label(cv)] if pivot else [])
                   + [metric.key, seed, _csv_number(value)])
  return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}
# Non-ASCII the tables print, typeset for any TeX engine.
_TEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "—": "--", "–": "--", "−": "$-$",
                "…": r"\ldots{}", "×": r"$\times$", "|": r"\textbar{}", "<": r"\textless{}",
                ">": r"\textgreater{}"}


def tex_escape(s: str) -> str:
  return "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)


def _tex_text(s: str) -> str:
  return "".join(_TEX_UNICODE.get(ch, ch) for ch in tex_escape(s))


def _tex_number(x: float, fmt: str) -> str:
  text = format_number(x, fmt)
  # Inside $...$ a bare "M" would be an italic variable.
  return re.sub(r"([KMBT])$", r"\\,\\mathrm{\1}", text) if fmt == "si" else text


def render_latex(table: Table,
                 extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """A booktabs tabular; the notes follow it as a footnotesize paragraph (and, for
  readers of the .tex, as comments above it)."""
  exp = table.exp
  view = table_view(table, exp, extra_columns)
  notes = [_tex_text(n) for n in view.notes]
  ascii_notes = [n.replace("±", "+-").replace("—", "--").replace("Δ", "delta")
                 .replace("−", "-").replace("–", "-").replace("…", "...") for n in view.notes]
  lines = [f"% {tex_escape(exp.name)}: {ascii_notes[0]}"] + [f"% {n}" for n in ascii_notes[1:]]
  lines += ["% needs \\usepackage{booktabs}",
            f"\\begin{{tabular}}{{{''.join(view.align)}}}", "\\toprule",
            " & ".join(view.tex_headers) + r" \\", "\\midrule"]
  lines += [" & ".join(row) + r" \\" for row in view.tex_rows]
  lines += ["\\bottomrule", "\\end{tabular}", "",
            "{\\footnotesize " + "\\par\n".join(notes) + "\\par}", ""]
  return "\n".join(lines)



def _safe(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def render_plots(table: Table, root: Path) -> list[Path]:
  """One PNG per `Plot`: row means of y (± std) against x."""

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
    # The legend sits right of the axes: inside, it covers points once rows are many.
    fig, ax = plt.subplots(figsize=(9, 4.2))
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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


def render(exp: Experiment, entries: Sequence[Entry], root: str | os.PathLike[str],
           extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> list[Path]:
  """Writes table.{md,csv,tex}, seeds.csv, the declared plots and curves.png into `root`.

  `extra_columns` maps a row label to {column name: text}, shown after the row
  label in every format (e.g. a tuned row's chosen setting and search budget).
  """
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  table = collect(exp, entries)
  written = []
  for name, text in (("table.md", render_markdown(table, extra_columns)),
                     ("table.csv", render_csv(table, extra_columns)),
                     ("seeds.csv", render_seeds_csv(table)),
                     ("table.tex", render_latex(table, extra_columns))):
    (root / name).write_text(text, encoding="utf-8")
    written.append(root / name)
  written += render_plots(table, root)
  if exp.curves:
    # One run per row (its first finished seed) keeps the overlay readable.
    firsts: dict[tuple[Any, ...], Entry] = {}
    for e in entries:
      rk = tuple(e.labels.get(k) for k in exp.rows)
      if rk not in firsts and e.point.done and rundir.read_metrics(e.point.workdir):
        firsts[rk] = e
    if firsts:
      try:
        written.append(plot_curves(
            [e.point.workdir for e in firsts.values()], root / "curves.png", list(exp.curves),
            labels=[", ".join(_fmt_label(v) for v in rk) for rk in firsts], title=exp.name))
      except UserError as err:  # e.g. no run logged the curve metrics
        print(f"warning: curves.png not written: {err}", file=sys.stderr)
  return written
