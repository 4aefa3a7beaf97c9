r"""The ablation HTML page's size and its render time in headless Chromium, against the goals.

  python -m bench.html_page [--rows 16] [--seeds 3] [--steps 600] [--every 10] [--rounds 5]
      [--keep DIR]

Builds a synthetic finished experiment (`--rows` rows x `--seeds` seeds, each
point a done.json, a point.json with provenance and a metrics.jsonl with a
train/loss and step-time record every `--every` steps up to `--steps`, and an
eval every 100 steps), every resource the Pareto plots draw (stored bytes,
trainable params, FLOPs per token, step time) and two goal metrics: 8 Pareto
plots, one declared plot and 3 learning-curve plots. Writes the page with
`reparam_jax.sweeps.html.write_page` and reports

  page_bytes       the size of index.html (goal: <= 2 MB = 2,000,000 bytes)
  build_s          the Python side: reading the points and writing the page
  render_s         Chromium's render time: the median wall time over `--rounds`
                   headless calls (`--dump-dom` plus a 1360x1800 `--screenshot`,
                   i.e. load, layout, scripts and paint) MINUS the median of the
                   same call on an empty page (the browser's own start-up and
                   exit), goal: <= 2 s
  browser_s        the median raw wall time, start-up included
  empty_page_s     the baseline's median

and each figure's ratio to its goal (< 1: within it), with the CPU's model name.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.timing import cpu_model
from reparam_jax.sweeps import experiment, html
from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

GOAL_BYTES = 2_000_000
GOAL_RENDER_S = 2.0


def synthetic_experiment(rows: int, seeds: int) -> Experiment:
  return Experiment(
      name="html_bench", config="configs/lm/shakespeare_char.py", seeds=seeds,
      description=f"Synthetic: {rows} rows x {seeds} seeds, for the page's size and render time.",
      variants={f"method {i} r={2 ** (i % 7)}": {"reparam.rank": 2 ** (i % 7), "size": i}
                for i in range(rows)},
      metrics=[Metric("eval/accuracy", "dev accuracy", fmt=".3f", goal="max"),
               Metric("eval/loss", "dev loss", fmt=".3f", goal="min"),
               Metric("params/bytes", "bytes", fmt="si"),
               Metric("params/trainable", "trainable", fmt="si"),
               Metric("train/model_flops_per_token", "FLOPs/token", fmt="si"),
               Metric("train/step_time_ms", "step ms", fmt=".1f")],
      plots=[Plot(x="reparam.rank", y="eval/loss", logx=True)],
      curves=("train/loss", "eval/loss", "eval/accuracy"))


def write_points(exp: Experiment, root: Path, steps: int, every: int) -> list[experiment.Entry]:
  _, entries = experiment.expand(exp, root)
  for e in entries:
    i, seed, rank = e.labels["size"], e.labels["seed"], e.labels["reparam.rank"]
    final = 1.2 + 0.4 / (1 + rank) + 0.01 * i + 0.015 * seed
    acc = 0.92 - 0.1 / (1 + rank) - 0.002 * i + 0.004 * seed
    wd = Path(e.point.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for s in range(every, steps + 1, every):
      noise = 0.05 * math.sin(s * 0.37 + seed + i)
      records.append({"step": s, "train/loss": final + 3.0 * math.exp(-s / 120) + noise,
                      "train/step_time_ms": 10 + 2 * math.log2(rank) + i + 0.1 * noise})
      if s % 100 == 0:
        records.append({"step": s, "eval/loss": final + 2.5 * math.exp(-s / 150),
                        "eval/accuracy": acc - 0.3 * math.exp(-s / 150)})
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (wd / "done.json").write_text(json.dumps({
        "step": steps, "eval/loss": records[-1]["eval/loss"], "eval/accuracy": acc,
        "params/bytes": 4e6 * (1 + rank / 16) / (1 + i % 4),
        "params/trainable": 1e3 * rank * (1 + i), "train/model_flops_per_token": 2e6 * (1 + rank)}))
    (wd / "point.json").write_text(json.dumps({
        "name": e.point.name, "config": e.point.config, "overrides": e.point.overrides,
        "provenance": {"commit": "0123456789abcdef", "dirty": False,
                       "machine": {"hostname": "bench", "cpu": cpu_model()}},
        "start": "2025-01-01T00:00:00", "end": "2025-01-01T01:00:00"}))
  return entries


def _median_browser_s(page: Path, rounds: int, shot: Path) -> tuple[float, list[str]]:
  html.render_in_chromium(page, screenshot=shot)  # warm: the binary and its libraries in cache
  times, console = [], []
  for _ in range(rounds):
    seen = html.render_in_chromium(page, screenshot=shot)
    times.append(seen.seconds)
    console += seen.console
  return statistics.median(times), console


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m bench.html_page",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--rows", type=int, default=16)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--keep", default=None, help="build the experiment here and keep it")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="html-bench-") as tmp:
    root = Path(args.keep or tmp)
    exp = synthetic_experiment(args.rows, args.seeds)
    entries = write_points(exp, root, args.steps, args.every)
    t0 = time.perf_counter()
    page = html.write_page(exp, entries, root)
    build_s = time.perf_counter() - t0
    empty = Path(tmp) / "empty.html"
    empty.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body></body>"
                     "</html>\n")
    report: dict[str, Any] = {"cpu": cpu_model(), "rows": args.rows, "seeds": args.seeds,
                              "records_per_seed": len(range(args.every, args.steps + 1,
                                                            args.every)),
                              "page": str(page), "page_bytes": page.stat().st_size,
                              "build_s": round(build_s, 3)}
    if html.find_chromium() is None:
      report["render_s"] = None
      report["note"] = "no Chromium on PATH: apt-get install chromium for the render time"
    else:
      browser_s, console = _median_browser_s(page, args.rounds, Path(tmp) / "page.png")
      empty_s, _ = _median_browser_s(empty, args.rounds, Path(tmp) / "empty.png")
      report.update(browser_s=round(browser_s, 3), empty_page_s=round(empty_s, 3),
                    render_s=round(max(browser_s - empty_s, 0.0), 3), rounds=args.rounds,
                    console_messages=console)
      report["render_vs_goal"] = round(report["render_s"] / GOAL_RENDER_S, 3)
    report["bytes_vs_goal"] = round(report["page_bytes"] / GOAL_BYTES, 3)
    print(json.dumps(report, indent=1))
    render = (f"render {report['render_s']:.2f} s ({report['render_vs_goal']:.2f}x the 2 s goal; "
              f"{report['browser_s']:.2f} s wall minus {report['empty_page_s']:.2f} s for an "
              "empty page)" if report.get("render_s") is not None else "render: no Chromium")
    print(f"[html_page] {args.rows} rows x {args.seeds} seeds: {report['page_bytes']:,} bytes "
          f"({report['bytes_vs_goal']:.3f}x the 2 MB goal), {render}, built in "
          f"{build_s:.2f} s; CPU: {report['cpu']}")


if __name__ == "__main__":
  main()
