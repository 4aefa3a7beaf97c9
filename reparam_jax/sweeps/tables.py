"""Ablation tables: collect each point's metric, mean ± std over seeds, render Markdown/CSV/LaTeX."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir
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
      cache[wd] = (rundir.read_metrics(wd), rundir.read_done(wd))
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
