"""An ablation as one static HTML page: the table, Pareto plots and learning curves, seen at a glance.

`write_page(exp, entries, root)` writes ``ROOT/index.html``: one self-contained
file (inline CSS, inline SVG drawn here in Python, a few lines of optional
JavaScript for sorting and highlighting) that opens from disk without a server,
a CDN or any file beside it, so it can be mailed, attached to a review or
opened on a cluster's login node. Everything the page shows is in its HTML:
without JavaScript it is complete, only less interactive.

The page holds

* the experiment's name and description, and the provenance of its points
  (``point.json``: commit, machine, ... where the launcher recorded them);
* the table (`tables.table_view`: the same cells, marks and notes as
  ``table.md``), one ``<tr data-row="LABEL">`` per row;
* Pareto plots: each metric with a `goal` (y) against each resource the rows
  have (x): stored bytes (else stored parameters), trainable parameters, model
  FLOPs per token and step time; one point per row with its seed spread as
  error bars, the Pareto front (the rows no other row beats on both axes)
  drawn, log axes where the values span more than 10x;
* the experiment's declared `Plot`s the same way (without a front);
* learning curves: per `Experiment.curves` key, each row's mean over seeds as
  a line and the min-max over seeds as a band, downsampled to at most
  `MAX_CURVE_POINTS` points per line (bucket means, so a noisy training loss
  stays readable and the page stays small).

Every plot is ``<svg data-plot="KIND:Y:X">`` (``pareto:eval/accuracy:params/bytes``,
``plot:eval/loss:reparam.rank``, ``curve:train/loss``) and each row inside it a
``<g data-row="LABEL">``: stable handles for tests and for readers' scripts.

`render_in_chromium` opens a page in headless Chromium (Debian's ``chromium``)
and returns the DOM after its scripts ran, the console's messages (uncaught
errors included) and a screenshot: what the tests and bench/html_page.py check.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reparam_jax.rundir import workdir as rundir
from reparam_jax.sweeps import tables
from reparam_jax.sweeps.experiment import Entry, Experiment, Metric
from reparam_jax.sweeps.plots import series

PAGE = "index.html"
MAX_CURVE_POINTS = 200
# Resources a row spends, the x axes of the Pareto plots. Alternatives in one
# tuple: the first the rows have is used (bytes say more than a parameter count
# once weights are quantized).
RESOURCES: tuple[tuple[str, ...], ...] = (
    ("params/bytes", "params/stored"),
    ("params/trainable",),
    ("train/model_flops_per_token",),
    ("train/step_time_ms",),
)
# Distinct on white, then the same hues darker: 20 rows before colors repeat.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#0b3d63", "#a04a00", "#135e13", "#7a1111",
           "#4d2e73", "#4a2b25", "#8f2e73", "#3d3d3d", "#6b6b0f", "#0a6470")
WIDTH, HEIGHT = 640, 380
MARGIN = {"left": 72, "right": 16, "top": 30, "bottom": 46}


# ---------------------------------------------------------------- reading runs


@dataclasses.dataclass
class _Run:
  workdir: str
  records: list[dict[str, Any]]
  done: dict[str, Any] | None
  point: dict[str, Any] | None


@dataclasses.dataclass
class _Group:
  """The points of one plotted row (a table row, or a row x pivot column)."""

  label: str
  color: str
  entries: list[Entry]


def _read_run(workdir: str) -> _Run:
  point_file = Path(rundir.path(workdir, rundir.POINT))
  try:
    point = json.loads(point_file.read_text(encoding="utf-8")) if point_file.is_file() else None
  except (OSError, ValueError):
    point = None  # a torn point.json costs the provenance line, not the page
  return _Run(workdir, rundir.read_metrics(workdir), rundir.read_done(workdir), point)


def _reduce_of(exp: Experiment, entry: Entry, key: str) -> str:
  if key in entry.reduce:
    return entry.reduce[key]
  for m in exp.metrics:
    if isinstance(m, Metric) and m.key == key:
      return m.reduce
  return "auto"


def _seed_values(exp: Experiment, group: _Group, key: str,
                 runs: Mapping[str, _Run]) -> list[float]:
  """`key` of each finished point of the group (an override value if `key` is one)."""
  out = []
  for e in group.entries:
    run = runs[e.point.workdir]
    label_value = e.labels.get(key)
    if isinstance(label_value, (int, float)) and not isinstance(label_value, bool):
      if run.done is not None:
        out.append(float(label_value))
      continue
    if run.done is None:
      continue
    v = tables.point_metric(run.workdir, key, _reduce_of(exp, e, key), run.records, run.done)
    if v is not None:
      out.append(v)
  return out


def _row_key(exp: Experiment, e: Entry) -> tuple[Any, ...]:
  return tuple(e.labels.get(k) for k in exp.rows)


def _row_label(rk: Sequence[Any]) -> str:
  """As `tables.Table.row_label` names the row: the table's and the plots' handles match."""
  return ", ".join(tables._fmt_label(v) for v in rk)


def _groups(exp: Experiment, entries: Sequence[Entry]) -> list[_Group]:
  """Plotted rows in table order; with pivot `columns`, one per (row, column value)."""
  groups: dict[tuple[Any, ...], _Group] = {}
  for e in entries:
    rk = _row_key(exp, e)
    key = rk + ((e.labels.get(exp.columns),) if exp.columns else ())
    if key not in groups:
      label = _row_label(rk)
      if exp.columns:
        label += f" @ {exp.columns}={tables._fmt_label(e.labels.get(exp.columns))}"
      groups[key] = _Group(label, PALETTE[len(groups) % len(PALETTE)], [])
    groups[key].entries.append(e)
  return list(groups.values())


# ---------------------------------------------------------------- the table


# ---------------------------------------------------------------- SVG plots


def _esc(s: Any) -> str:
  return html.escape(str(s), quote=True)


def _num(v: float) -> str:
  """A pixel coordinate: one decimal is finer than a screen shows and keeps the page small."""
  return f"{v:.1f}".rstrip("0").rstrip(".")


def wants_log(values: Sequence[float]) -> bool:
  """Log scale when positive values span more than 10x (parameter counts, FLOPs)."""
  pos = [v for v in values if v is not None]
  return bool(pos) and min(pos) > 0 and max(pos) > 10 * min(pos)


def _fmt_tick(v: float) -> str:
  if v != 0 and abs(v) >= 1e4:
    return tables.format_number(v, "si")
  return f"{v:.4g}"


@dataclasses.dataclass
class Axis:
  """Data value -> pixel along one axis, with ticks a reader can read."""

  lo: float
  hi: float
  log: bool
  pixel_lo: float
  pixel_hi: float

  @classmethod
  def fit(cls, values: Sequence[float], log: bool, pixel_lo: float, pixel_hi: float,
          pad: float = 0.06) -> Axis:
    lo, hi = min(values), max(values)
    if log:
      lo, hi = math.log10(lo), math.log10(hi)
    if hi == lo:
      # One value (every row stores as many parameters): centre it.
      lo, hi = lo - (0.5 if log else max(abs(lo) * 0.1, 1e-12)), hi + (
          0.5 if log else max(abs(hi) * 0.1, 1e-12))
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if log:
      lo, hi = 10 ** lo, 10 ** hi
    return cls(lo, hi, log, pixel_lo, pixel_hi)

  def _t(self, v: float) -> float:
    return math.log10(v) if self.log else v

  def __call__(self, v: float) -> float:
    a, b = self._t(self.lo), self._t(self.hi)
    return self.pixel_lo + (self._t(v) - a) / (b - a) * (self.pixel_hi - self.pixel_lo)

  def ticks(self) -> list[float]:
    if self.log:
      first, last = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
      mults = (1,) if last - first > 3 else (1, 2, 5)
      ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in mults]
    else:
      raw = (self.hi - self.lo) / 5
      mag = 10 ** math.floor(math.log10(raw))
      step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
      start = math.ceil(self.lo / step)
      ticks = [round(k * step, 12) for k in range(start, math.floor(self.hi / step) + 1)]
    return [t for t in ticks if self.lo <= t <= self.hi]


def _frame(x: Axis, y: Axis, xlabel: str, ylabel: str, title: str) -> list[str]:
  """Axes box, grid, ticks and labels."""
  left, right = MARGIN["left"], WIDTH - MARGIN["right"]
  top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
  out = [(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
          'class="box"/>')]
  for t in x.ticks():
    px = _num(x(t))
    out.append(f'<line x1="{px}" x2="{px}" y1="{top}" y2="{bottom}" class="grid"/>'
               f'<text x="{px}" y="{bottom + 14}" class="tick" text-anchor="middle">'
               f'{_esc(_fmt_tick(t))}</text>')
  for t in y.ticks():
    py = _num(y(t))
    out.append(f'<line x1="{left}" x2="{right}" y1="{py}" y2="{py}" class="grid"/>'
               f'<text x="{left - 4}" y="{py}" class="tick" text-anchor="end" '
               f'dominant-baseline="middle">{_esc(_fmt_tick(t))}</text>')
  xl = xlabel + (" (log)" if x.log else "")
  yl = ylabel + (" (log)" if y.log else "")
  out.append(f'<text x="{(left + right) / 2:.0f}" y="{HEIGHT - 8}" class="label" '
             f'text-anchor="middle">{_esc(xl)}</text>')
  out.append(f'<text transform="translate(14 {(top + bottom) / 2:.0f}) rotate(-90)" '
             f'class="label" text-anchor="middle">{_esc(yl)}</text>')
  out.append(f'<text x="{left}" y="18" class="title">{_esc(title)}</text>')
  return out


def _svg(plot_id: str, body: Sequence[str], caption: str) -> str:
  return (f'<figure><svg data-plot="{_esc(plot_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
          f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img">'
          + "".join(body) + f'</svg><figcaption>{caption}</figcaption></figure>')


@dataclasses.dataclass
class ScatterPoint:
  """One row in a scatter: mean and spread over its seeds on both axes."""

  label: str
  color: str
  x: list[float]
  y: list[float]

  @property
  def x_mean(self) -> float:
    return statistics.fmean(self.x)

  @property
  def y_mean(self) -> float:
    return statistics.fmean(self.y)


def _std(values: Sequence[float]) -> float:
  return statistics.stdev(values) if len(values) > 1 else 0.0


def pareto_front(points: Sequence[tuple[float, float]], goal: str) -> list[int]:
  """Indices of the points no other point beats: no more x (a cost) for a better y.

  Sorted by x; ties in x keep only the better y. `goal` says which y is better.
  """
  better: Callable[[float, float], bool] = (lambda a, b: a < b) if goal == "min" else (
      lambda a, b: a > b)
  order = sorted(range(len(points)), key=lambda i: (points[i][0],
                                                    points[i][1] if goal == "min" else
                                                    -points[i][1]))
  front: list[int] = []
  for i in order:
    if not front or better(points[i][1], points[front[-1]][1]):
      if front and points[front[-1]][0] == points[i][0]:
        continue
      front.append(i)
  return front


def scatter_svg(plot_id: str, title: str, xlabel: str, ylabel: str,
                points: Sequence[ScatterPoint], references: Sequence[ScatterPoint] = (),
                goal: str | None = None, logx: bool | None = None,
                logy: bool | None = None) -> str:
  """Row means with ±1 std error bars on both axes, labelled; rows without an x value
  (`references`) as dashed horizontal lines; with a `goal`, the Pareto front."""
  left, right = MARGIN["left"], WIDTH - MARGIN["right"]
  top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
  xs = [v for p in points for v in (p.x_mean - _std(p.x), p.x_mean + _std(p.x))]
  ys = [v for p in [*points, *references]
        for v in (p.y_mean - _std(p.y), p.y_mean + _std(p.y))]
  means_x = [p.x_mean for p in points]
  means_y = [p.y_mean for p in [*points, *references]]
  logx = wants_log(means_x) if logx is None else logx
  logy = wants_log(means_y) if logy is None else logy
  if logx:
    xs = [v for v in xs if v > 0]
  if logy:
    ys = [v for v in ys if v > 0]
  xa = Axis.fit(xs or [1.0], logx, left, right)
  ya = Axis.fit(ys or [1.0], logy, bottom, top)
  body = _frame(xa, ya, xlabel, ylabel, title)
  clip = lambda v, a: max(min(v, max(a.lo, a.hi)), min(a.lo, a.hi))
  front: list[int] = []
  if goal and len(points) > 1:
    front = pareto_front([(p.x_mean, p.y_mean) for p in points], goal)
    path = []
    for k, i in enumerate(front):
      px, py = xa(points[i].x_mean), ya(points[i].y_mean)
      path.append(f"M{_num(px)} {_num(py)}" if k == 0 else f"H{_num(px)}V{_num(py)}")
    path.append(f"H{_num(right)}")
    body.append(f'<path d="{"".join(path)}" class="front"/>')
  for ref in references:
    py = _num(ya(clip(ref.y_mean, ya)))
    body.append(f'<g data-row="{_esc(ref.label)}" class="row"><title>{_esc(ref.label)}: '
                f'{ref.y_mean:.4g} (no {_esc(xlabel)})</title>'
                f'<line x1="{left}" x2="{right}" y1="{py}" y2="{py}" stroke="{ref.color}" '
                f'class="ref"/><text x="{right - 4}" y="{_num(float(py) - 3)}" '
                f'text-anchor="end" class="pl">{_esc(ref.label)}</text></g>')
  spots = place_labels([(xa(p.x_mean), ya(p.y_mean), p.label) for p in points],
                       front + [i for i in range(len(points)) if i not in front],
                       (left, top, right, bottom))
  for i, p in enumerate(points):
    cx, cy = xa(p.x_mean), ya(p.y_mean)
    sx, sy = _std(p.x), _std(p.y)
    bars = []
    if sy:
      y0, y1 = ya(clip(p.y_mean - sy, ya)), ya(clip(p.y_mean + sy, ya))
      bars.append(f'M{_num(cx)} {_num(y0)}V{_num(y1)}M{_num(cx - 3)} {_num(y0)}h6'
                  f'M{_num(cx - 3)} {_num(y1)}h6')
    if sx:
      x0, x1 = xa(clip(p.x_mean - sx, xa)), xa(clip(p.x_mean + sx, xa))
      bars.append(f'M{_num(x0)} {_num(cy)}H{_num(x1)}')
    on_front = i in front
    front_attr = ' data-front="1"' if on_front else ""
    tip = (f"{p.label}: {ylabel} {p.y_mean:.4g} ± {sy:.2g}, {xlabel} {p.x_mean:.4g}"
           f" (n={len(p.y)})" + (", on the Pareto front" if on_front else ""))
    body.append(
        f'<g data-row="{_esc(p.label)}" class="row"{front_attr}>'
        f'<title>{_esc(tip)}</title>'
        + (f'<path d="{"".join(bars)}" stroke="{p.color}" class="err"/>' if bars else "")
        + f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="{5 if on_front else 4}" '
        f'fill="{p.color if on_front else "#fff"}" stroke="{p.color}" stroke-width="2"/>'
        + (f'<text x="{_num(spots[i][0])}" y="{_num(spots[i][1])}" text-anchor="{spots[i][2]}" '
           f'class="pl">{_esc(p.label)}</text>' if spots[i] else "") + '</g>')
  caption = (f"{_esc(ylabel)} against {_esc(xlabel)}: one point per row, the mean over its "
             "seeds with ±1 std (ddof=1) as error bars")
  if front:
    caption += (f"; the line is the Pareto front ({'lower' if goal == 'min' else 'higher'} "
                f"{_esc(ylabel)} for less {_esc(xlabel)}), its rows filled")
  if references:
    caption += f"; dashed: rows without {_esc(xlabel)}"
  if None in spots:
    caption += "; labels that would overlap are left out (hover a point, or see the colors)"
  return _svg(plot_id, body, caption + ".")


def place_labels(anchors: Sequence[tuple[float, float, str]], order: Sequence[int],
                 box: tuple[float, float, float, float]) -> list[tuple[float, float, str] | None]:
  """Where each point's label goes: (x, y, text-anchor), or None where every spot beside
  the point would cover a label placed before it or leave the axes `box`.

  `anchors` are (px, py, label); labels are placed in `order` (the Pareto front first,
  as those are the rows a reader looks for), each at the first free spot of:
  right-above, left-above, right-below, left-below. A left-out label is still the
  point's tooltip, and the legend's colors name the row.
  """
  left, top, right, bottom = box
  placed: list[tuple[float, float, float, float]] = []
  out: list[tuple[float, float, str] | None] = [None] * len(anchors)
  for i in order:
    px, py, label = anchors[i]
    width, height = 5.6 * len(label) + 2, 11.0  # a 10px sans-serif line
    for dx, dy in ((7, -6), (-7, -6), (7, 14), (-7, 14)):
      x0 = px + dx if dx > 0 else px + dx - width
      y1 = py + dy + 2
      rect = (x0, y1 - height, x0 + width, y1)
      inside = rect[0] >= left and rect[2] <= right and rect[1] >= top and rect[3] <= bottom
      if inside and not any(rect[0] < q[2] and q[0] < rect[2] and rect[1] < q[3] and q[1] < rect[3]
                            for q in placed):
        placed.append(rect)
        out[i] = (px + dx, py + dy, "start" if dx > 0 else "end")
        break
  return out


@dataclasses.dataclass
class Curve:
  """A row's learning curve: steps, mean over seeds, and the min-max band."""

  label: str
  color: str
  steps: list[float]
  mean: list[float]
  lo: list[float]
  hi: list[float]
  seeds: int


def mean_curve(label: str, color: str, per_seed: Sequence[tuple[Sequence[float],
                                                                 Sequence[float]]],
               max_points: int = MAX_CURVE_POINTS) -> Curve | None:
  """Mean and min-max over seeds at each logged step, then bucket means down to
  `max_points` points (a noisy curve keeps its shape, the page its size)."""
  by_step: dict[float, list[float]] = {}
  for steps, values in per_seed:
    for s, v in zip(steps, values):
      by_step.setdefault(s, []).append(v)
  if not by_step:
    return None
  steps = sorted(by_step)
  k = max(1, math.ceil(len(steps) / max_points))
  out = Curve(label, color, [], [], [], [], sum(1 for s, _ in per_seed if s))
  for b in range(0, len(steps), k):
    bucket = steps[b:b + k]
    out.steps.append(statistics.fmean(bucket))
    out.mean.append(statistics.fmean(statistics.fmean(by_step[s]) for s in bucket))
    out.lo.append(statistics.fmean(min(by_step[s]) for s in bucket))
    out.hi.append(statistics.fmean(max(by_step[s]) for s in bucket))
  return out


def curves_svg(plot_id: str, key: str, curves: Sequence[Curve]) -> str:
  left, right = MARGIN["left"], WIDTH - MARGIN["right"]
  top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
  xa = Axis.fit([s for c in curves for s in c.steps], False, left, right, pad=0.02)
  all_y = [v for c in curves for v in (*c.lo, *c.hi)]
  logy = wants_log([v for c in curves for v in c.mean])
  ya = Axis.fit([v for v in all_y if v > 0] if logy else all_y, logy, bottom, top)
  body = _frame(xa, ya, "step", key, key)
  body.append(f'<clipPath id="clip-{_esc(_slug(plot_id))}"><rect x="{left}" y="{top}" '
              f'width="{right - left}" height="{bottom - top}"/></clipPath>')
  body.append(f'<g clip-path="url(#clip-{_esc(_slug(plot_id))})">')
  for c in curves:
    pos = (lambda v: max(v, ya.lo)) if logy else (lambda v: v)
    line = " ".join(f"{_num(xa(s))},{_num(ya(pos(v)))}" for s, v in zip(c.steps, c.mean))
    band = ""
    if c.seeds > 1 and any(h != lo for h, lo in zip(c.hi, c.lo)):
      pts = [f"{_num(xa(s))},{_num(ya(pos(v)))}" for s, v in zip(c.steps, c.hi)]
      pts += [f"{_num(xa(s))},{_num(ya(pos(v)))}" for s, v in
              zip(reversed(c.steps), reversed(c.lo))]
      band = f'<polygon points="{" ".join(pts)}" fill="{c.color}" class="band"/>'
    last = f"{c.mean[-1]:.4g}"
    body.append(f'<g data-row="{_esc(c.label)}" class="row"><title>{_esc(c.label)}: '
                f'{_esc(key)} {last} at step {c.steps[-1]:.0f}, mean of {c.seeds} seed(s)'
                f'</title>{band}<polyline points="{line}" stroke="{c.color}" class="line"/>'
                + (f'<circle cx="{_num(xa(c.steps[0]))}" cy="{_num(ya(pos(c.mean[0])))}" r="3" '
                   f'fill="{c.color}"/>' if len(c.steps) == 1 else "") + "</g>")
  body.append("</g>")
  caption = (f"{_esc(key)} per row: the mean over seeds (line) and the min–max over seeds "
             f"(band), at most {MAX_CURVE_POINTS} points per line (means of consecutive logged "
             "steps).")
  return _svg(plot_id, body, caption)


def _slug(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")


# ---------------------------------------------------------------- the page's parts


def _provenance(exp: Experiment, entries: Sequence[Entry], runs: Mapping[str, _Run]) -> str:
  """What the points' point.json files say about where and from what they ran."""
  workdirs = list(dict.fromkeys(e.point.workdir for e in entries))
  done = sum(1 for w in workdirs if runs[w].done is not None)
  values: dict[str, dict[str, int]] = {}
  starts, ends = [], []
  for w in workdirs:
    info = runs[w].point or {}
    for key, value in _flatten(info.get("provenance") or {}).items():
      counts = values.setdefault(key, {})
      counts[value] = counts.get(value, 0) + 1
    if isinstance(info.get("start"), str):
      starts.append(info["start"])
    if isinstance(info.get("end"), str):
      ends.append(info["end"])
  lines = [f"<li>{done} of {len(workdirs)} points finished</li>"]
  if starts:
    lines.append(f"<li>ran from {_esc(min(starts))} to {_esc(max(ends) if ends else '?')}</li>")
  if values:
    for key, counts in values.items():
      shown = ", ".join(f"<code>{_esc(v)}</code>" + (f" ({n} points)" if len(counts) > 1 else "")
                        for v, n in list(counts.items())[:6])
      more = f", … ({len(counts) - 6} more)" if len(counts) > 6 else ""
      lines.append(f'<li data-provenance="{_esc(key)}">{_esc(key)}: {shown}{more}</li>')
  else:
    lines.append("<li>no provenance recorded in the points' point.json</li>")
  rows = []
  labels_of: dict[str, list[str]] = {}
  for e in entries:
    labels_of.setdefault(e.point.workdir, []).append(_row_label(_row_key(exp, e)))
  for w in workdirs:
    info = runs[w].point or {}
    commit = (info.get("provenance") or {}).get("commit") if isinstance(
        info.get("provenance"), dict) else None
    rows.append(f"<tr><td><code>{_esc(os.path.basename(w))}</code></td>"
                f"<td>{_esc(', '.join(dict.fromkeys(labels_of[w])))}</td>"
                f"<td>{'done' if runs[w].done is not None else 'not finished'}</td>"
                f"<td><code>{_esc(str(commit)[:12]) if commit else '—'}</code></td></tr>")
  return (f'<section id="provenance"><h2>Provenance</h2><ul>{"".join(lines)}</ul>'
          f'<details><summary>points ({len(workdirs)})</summary><table class="points">'
          f'<tr><th>point</th><th>rows</th><th>status</th><th>commit</th></tr>{"".join(rows)}'
          f'</table></details></section>')


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
  out: dict[str, str] = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v, default=str)
  return out


def _table_html(view: tables.TableView, n_keys: int) -> str:
  """`view` as an HTML table: the `n_keys` row-key columns as row headers, numbers right."""
  n_label = view.label_columns
  right = [a == "r" for a in view.align] if len(view.align) == len(view.headers) else [
      j >= n_label for j in range(len(view.headers))]
  num = ' class="num"'
  head = "".join(f'<th data-col="{j}"{num if right[j] else ""}>{_esc(h)}</th>'
                 for j, h in enumerate(view.headers))
  body = []
  for i, (label, cells) in enumerate(zip(view.row_labels, view.rows)):
    tds = []
    for j, text in enumerate(cells):
      best = (i, j) in view.best
      tag = "th" if j < n_keys else "td"
      cls = " ".join(c for c, on in (("num", right[j]), ("best", best)) if on)
      cell = f"<b>{_esc(text)}</b>" if best else _esc(text)
      attr = f' class="{cls}"' if cls else ""
      tds.append(f"<{tag}{attr}>{cell}</{tag}>")
    body.append(f'<tr data-row="{_esc(label)}">{"".join(tds)}</tr>')
  notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in view.notes)
  return (f'<section id="table"><h2>Table</h2><div class="scroll"><table id="results"><thead><tr>{head}</tr>'
          f'</thead><tbody>{"".join(body)}</tbody></table></div>{notes}</section>')


def _pareto_plots(exp: Experiment, groups: Sequence[_Group], runs: Mapping[str, _Run],
                  values: Callable[[_Group, str], list[float]]) -> list[str]:
  goals = [m for m in exp.metrics if isinstance(m, Metric) and m.goal]
  figures = []
  for alternatives in RESOURCES:
    x_key = next((k for k in alternatives if any(values(g, k) for g in groups)), None)
    if x_key is None:
      continue
    for m in goals:
      if m.key == x_key:
        continue
      pts = []
      for g in groups:
        xs, ys = values(g, x_key), values(g, m.key)
        if xs and ys:
          pts.append(ScatterPoint(g.label, g.color, xs, ys))
      if not pts:
        continue
      figures.append(scatter_svg(f"pareto:{m.key}:{x_key}", f"{m.name} vs {x_key}", x_key,
                                 m.name, pts, goal=m.goal))
  return figures


def _declared_plots(exp: Experiment, groups: Sequence[_Group],
                    values: Callable[[_Group, str], list[float]]) -> list[str]:
  figures = []
  for spec in exp.plots:
    pts, refs = [], []
    for g in groups:
      ys = values(g, spec.y)
      if not ys:
        continue
      xs = values(g, spec.x)
      (pts if xs else refs).append(ScatterPoint(g.label, g.color, xs, ys))
    if not pts and not refs:
      continue
    figures.append(scatter_svg(f"plot:{spec.y}:{spec.x}", f"{spec.y} vs {spec.x}", spec.x,
                               spec.y, pts, refs, logx=spec.logx or None,
                               logy=spec.logy or None))
  return figures


def _curve_plots(exp: Experiment, groups: Sequence[_Group],
                 runs: Mapping[str, _Run]) -> list[str]:
  figures = []
  for key in exp.curves:
    curves = []
    for g in groups:
      per_seed = [series(runs[e.point.workdir].records, key) for e in g.entries
                  if runs[e.point.workdir].done is not None]
      c = mean_curve(g.label, g.color, [s for s in per_seed if s[0]])
      if c is not None:
        curves.append(c)
    if curves:
      figures.append(curves_svg(f"curve:{key}", key, curves))
  return figures


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1340px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.desc{white-space:pre-wrap;color:#444}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
#results th,#results td{padding:4px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
#results .num{text-align:right}#results td{white-space:nowrap}.scroll{overflow-x:auto}
#results thead th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}
#results tr:hover td,#results tr:hover th,#results tr.hl td,#results tr.hl th{background:#fff5d6}
td.best{background:#eef7ee}.note{color:#555;font-size:12px;margin:4px 0}
.points td,.points th{padding:2px 8px;font-size:12px;text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:640px}
figcaption{font-size:12px;color:#555}svg{background:#fff;max-width:100%;height:auto}
svg .box{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .tick{font-size:10px;fill:#555}
svg .label{font-size:12px;fill:#333}svg .title{font-size:13px;font-weight:600;fill:#222}
svg .pl{font-size:10px;fill:#333}svg .front{fill:none;stroke:#555;stroke-dasharray:4 3}
svg .err{fill:none;stroke-width:1.5}svg .ref{stroke-dasharray:6 4;stroke-width:1.5}
svg .line{fill:none;stroke-width:1.6}svg .band{opacity:.18;stroke:none}
svg g.row.hl .line{stroke-width:3.5}svg g.row.dim{opacity:.15}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:4px 0 8px}
.legend span{cursor:pointer}.legend i{display:inline-block;width:14px;height:4px;margin-right:4px;
vertical-align:middle}
"""

# Optional: sorting by a column, and hovering a row (table or legend) highlights it in every
# plot. The page is complete without it; it sets data-ready on <html> once it ran through.
_JS = """
(function(){
var t=document.getElementById('results');
function num(c){var m=(c.textContent||'').replace(/\\u2212/g,'-').match(/-?\\d+(\\.\\d+)?(e[-+]?\\d+)?/i);
if(!m)return null;var v=parseFloat(m[0]),s=(c.textContent||'').trim().slice(m.index+m[0].length,
m.index+m[0].length+1);return v*({K:1e3,M:1e6,B:1e9,T:1e12}[s]||1);}
if(t){var dir={};t.querySelectorAll('thead th').forEach(function(h,i){h.addEventListener('click',
function(){var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);dir[i]=-(dir[i]||-1);
rows.sort(function(a,c){var x=num(a.cells[i]),y=num(c.cells[i]);if(x===null&&y===null)
return a.cells[i].textContent.localeCompare(c.cells[i].textContent)*dir[i];if(x===null)return 1;
if(y===null)return -1;return (x-y)*dir[i];});rows.forEach(function(r){b.appendChild(r);});});});}
function mark(label,on){document.querySelectorAll('[data-row]').forEach(function(e){
var me=e.getAttribute('data-row')===label;if(e.tagName==='TR')e.classList.toggle('hl',on&&me);
else{e.classList.toggle('hl',on&&me);e.classList.toggle('dim',on&&!me);}});}
document.querySelectorAll('#results tbody tr,.legend span').forEach(function(e){
var l=e.getAttribute('data-row');e.addEventListener('mouseenter',function(){mark(l,true);});
e.addEventListener('mouseleave',function(){mark(l,false);});});
document.documentElement.setAttribute('data-ready','1');
})();
"""


def page_html(exp: Experiment, entries: Sequence[Entry],
              extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """The page as one string (see the module docstring for what it holds)."""
  runs = {w: _read_run(w) for w in dict.fromkeys(e.point.workdir for e in entries)}
  table = tables.collect(exp, entries)
  view = tables.table_view(table, exp, extra_columns=extra_columns)
  groups = _groups(exp, entries)
  cache: dict[tuple[str, str], list[float]] = {}

  def values(g: _Group, key: str) -> list[float]:
    if (g.label, key) not in cache:
      cache[(g.label, key)] = _seed_values(exp, g, key, runs)
    return cache[(g.label, key)]

  pareto = _pareto_plots(exp, groups, runs, values)
  declared = _declared_plots(exp, groups, values)
  curves = _curve_plots(exp, groups, runs)
  legend = "".join(f'<span data-row="{_esc(g.label)}"><i style="background:{g.color}"></i>'
                   f'{_esc(g.label)}</span>' for g in groups)
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      '<meta name="viewport" content="width=device-width,initial-scale=1">',
      f"<title>{_esc(exp.name)}</title><style>{_CSS}</style></head><body>",
      f'<header><h1>{_esc(exp.name)}</h1>'
      + (f'<p class="desc">{_esc(exp.description.strip())}</p>' if exp.description else "")
      + f'<p class="note">written {_esc(time.strftime("%Y-%m-%d %H:%M %Z"))} by '
      '<code>python -m reparam_jax.report_html</code> from the finished points; '
      'hover a row to highlight it in every plot, click a column header to sort.</p></header>',
      _table_html(view, len(exp.rows)),
  ]
  sections = (("pareto", "Pareto plots", pareto,
               ("no row has both a goal metric and a resource (params/bytes, params/stored, "
                "params/trainable, train/model_flops_per_token, train/step_time_ms)")),
              ("plots", "Declared plots", declared, None),
              ("curves", "Learning curves", curves,
               f"no finished point logged {', '.join(exp.curves) or 'curves'}"))
  for sid, title, figures, empty in sections:
    if not figures and empty is None:
      continue
    inner = "".join(figures) if figures else f'<p class="note">{_esc(empty)}</p>'
    lead = f'<div class="legend">{legend}</div>' if figures else ""
    parts.append(f'<section id="{sid}"><h2>{title}</h2>{lead}<div class="plots">{inner}</div>'
                 '</section>')
  parts.append(_provenance(exp, entries, runs))
  parts.append(f"<script>{_JS}</script></body></html>")
  return "\n".join(parts) + "\n"


def write_page(exp: Experiment, entries: Sequence[Entry], root: str | os.PathLike[str],
               extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> Path:
  """Writes ``ROOT/index.html`` (`page_html`) from the finished points; returns its path.

  Written to a temporary name and renamed, so a reader never opens half a page.
  """
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  path = root / PAGE
  tmp = path.with_name(f".{PAGE}.tmp{os.getpid()}")
  tmp.write_text(page_html(exp, entries, extra_columns), encoding="utf-8")
  os.replace(tmp, path)
  return path


# ---------------------------------------------------------------- headless Chromium


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
  """$REPARAM_CHROMIUM, else the first Chromium on PATH; None when there is none."""
  env = os.environ.get("REPARAM_CHROMIUM")
  if env:
    return shutil.which(env) or (env if os.access(env, os.X_OK) else None)
  return next((p for p in map(shutil.which, BROWSERS) if p), None)


# `--enable-logging=stderr --v=0` prints every console message and uncaught error as
#   [pid:tid:time:INFO:CONSOLE:12] "Uncaught Error: boom", source: file:///x.html (12)
_CONSOLE_RE = re.compile(r':CONSOLE(?::\d+|\(\d+\))?\] "(.*)", source: (.*?) \((\d+)\)\s*$',
                         re.MULTILINE)


@dataclasses.dataclass
class BrowserRender:
  """What headless Chromium made of a page."""

  dom: str  # the DOM after the page's scripts ran (--dump-dom)
  console: list[str]  # console messages and uncaught errors, "message (source:line)"
  seconds: float  # wall time of the whole browser call
  screenshot: Path | None


def render_in_chromium(page: str | os.PathLike[str], screenshot: str | os.PathLike[str] | None
                       = None, window: tuple[int, int] = (1360, 1800),
                       chromium: str | None = None, timeout_s: float = 60.0) -> BrowserRender:
  """Opens `page` from disk (file://) in headless Chromium, like a reader would.

  `--no-sandbox`: the page is our own, and Chromium's sandbox refuses to start as root
  or in many containers. A fresh profile per call keeps parallel calls apart.
  """
  exe = chromium or find_chromium()
  if exe is None:
    raise FileNotFoundError("no Chromium found (apt-get install chromium, or set "
                            "REPARAM_CHROMIUM=/path/to/chrome)")
  with tempfile.TemporaryDirectory(prefix="reparam-chromium-") as profile:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           f"--window-size={window[0]},{window[1]}", "--dump-dom"]
    if screenshot is not None:
      cmd.append(f"--screenshot={os.fspath(screenshot)}")
    cmd.append(Path(page).resolve().as_uri())
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    seconds = time.perf_counter() - start
  if proc.returncode != 0 or "<html" not in proc.stdout:
    raise RuntimeError(f"{exe} exited with {proc.returncode}: {proc.stderr[-2000:]}")
  console = [f"{m.group(1)} ({m.group(2)}:{m.group(3)})"
             for m in _CONSOLE_RE.finditer(proc.stderr)]
  return BrowserRender(proc.stdout, console, seconds,
                       Path(screenshot) if screenshot is not None else None)
