"""Training curves from `metrics.jsonl`: one run or several overlaid.

  python -m reparam_jax.plot WORKDIR [WORKDIR ...] --out=curves.png \
      [--metrics=train/loss,eval/loss] [--labels=a,b] [--logy]

Metrics that share a name after the prefix (``train/loss`` and ``eval/loss``)
share an axes, train solid and eval dashed, so over-fitting shows as a gap;
other metrics get an axes each. Each run has one colour across axes.

Also home of the `metrics.jsonl` reader used by `reparam_jax.ablate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from reparam_jax.errors import UserError, exit_on_user_error

METRICS_FILE = "metrics.jsonl"
DEFAULT_METRICS = ("train/loss", "eval/loss")


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Records of `WORKDIR/metrics.jsonl` in file order ([] when absent).

  A torn last line (a run killed mid-write) is skipped rather than fatal, since
  interrupted runs are normal here and are resumed later.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(rec, dict):
        records.append(rec)
  return records


def read_done(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The final summary `WORKDIR/done.json`, or None while the run is unfinished."""
  path = Path(workdir) / "done.json"
  if not path.exists():
    return None
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from e
  return data if isinstance(data, dict) else None


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
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  workdirs = [os.fspath(w) for w in workdirs]
  labels = list(labels) if labels else _short_labels(workdirs)
  if len(labels) != len(workdirs):
    raise UserError(f"--labels has {len(labels)} entries for {len(workdirs)} workdirs")
  runs = []
  for w in workdirs:
    if not (Path(w) / METRICS_FILE).exists():
      raise UserError(f"{Path(w) / METRICS_FILE} does not exist")
    runs.append(read_metrics(w))
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


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.plot", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl")
  parser.add_argument("--out", default="curves.png")
  parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
  parser.add_argument("--labels", default=None, help="comma-separated legend labels")
  parser.add_argument("--logy", action="store_true")
  parser.add_argument("--title", default=None)
  args = parser.parse_args(argv)
  metrics = [m for m in args.metrics.split(",") if m]
  labels = args.labels.split(",") if args.labels else None
  out = plot_curves(args.workdirs, args.out, metrics, labels, args.logy, args.title)
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
