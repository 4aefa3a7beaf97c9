"""Plots of runs: training curves from `metrics.jsonl`, and an ablation table's declared """

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
# NEEDS from the command: METRICS_FILE, read_metrics

import matplotlib.pyplot as plt  # noqa: E402

from reparam_jax.errors import UserError
from reparam_jax.rundir import workdir as rundir

DEFAULT_METRICS = ("train/loss", "eval/loss")


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
  """(steps, values) of `key`, sorted by step.

  A resumed run re-logs the steps between its last checkpoint and the crash;
  the later record of a step wins, as it belongs to the run that continued.
  """
  by_step: dict[float, float] = {}
  for rec in records:
    if key in rec and "step" in rec and _is_number(rec[key]):
      by_step[float(rec["step"])] = float(rec[key])
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _axis_groups(metrics: Sequence[str]) -> list[list[str]]:
  groups: dict[str, list[str]] = {}
  for m in metrics:
    groups.setdefault(m.split("/", 1)[-1], []).append(m)
  return list(groups.values())


def _short_labels(workdirs: Sequence[str]) -> list[str]:
  parts = [Path(w).resolve().parts for w in workdirs]
  if len(parts) == 1:
    return [parts[0][-1]]
  common = os.path.commonprefix(parts)
  return ["/".join(p[len(common):]) or p[-1] for p in parts]


def plot_curves(workdirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                metrics: Sequence[str] = DEFAULT_METRICS, labels: Sequence[str] | None = None,
                logy: bool = False, title: str | None = None) -> Path:
  """Writes a PNG of `metrics` vs. step for each workdir; returns its path."""

  workdirs = [os.fspath(w) for w in workdirs]
  labels = list(labels) if labels else _short_labels(workdirs)
  if len(labels) != len(workdirs):
    raise UserError(f"--labels has {len(labels)} entries for {len(workdirs)} workdirs")
  runs = []
  for w in workdirs:
    if not os.path.exists(rundir.path(w, rundir.METRICS)):
      raise UserError(f"{rundir.path(w, rundir.METRICS)} does not exist")
    runs.append(rundir.read_metrics(w))
  groups = _axis_groups(metrics)
  fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["-", "--", ":", "-."]
  plotted = 0
  for ax, group in zip(axes[0], groups):
    for i, (records, label) in enumerate(zip(runs, labels)):
      for j, m in enumerate(group):
        steps, values = series(records, m)
        if not steps:
          continue
        plotted += 1
        name = label if len(group) == 1 else f"{label} {m.split('/', 1)[0]}"
        ax.plot(steps, values, styles[j % len(styles)], color=colors[i % len(colors)],
                marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(" / ".join(group))
    if logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  if plotted == 0:
    plt.close(fig)
    raise UserError(f"none of {', '.join(metrics)} is in the metrics.jsonl of "
                    f"{', '.join(workdirs)}")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out
