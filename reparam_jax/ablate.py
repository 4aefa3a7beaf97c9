"""Ablation tables: run what is missing, then tabulate mean ± std over seeds.

  python -m reparam_jax.ablate experiments/<name>.py [--workdir=ROOT] [--render-only]
      [--variant=LABEL ...] [--parallel=N] [--dry-run] [--launcher=local|slurm|tpu] [--launcher_args="..."]
      [--seeds=N] [--train_module=M] [--config.a.b=v ...]

writes ``ROOT/table.md``, ``table.csv``, ``table.tex``, one PNG per declared
plot (``<y>_vs_<x>.png``) and ``curves.png``. ROOT defaults to
``runs/ablate/<name>``. Points are run through `reparam_jax.sweep` (each in
``ROOT/<point name>``, finished ones skipped), so re-running with every point
done only re-renders; ``--render-only`` never runs anything. ``--variant=LABEL``
(repeatable) runs and tabulates only those rows (plus the rows they reference
with ``{variant:...}``): after a fix that touches some rows, re-run them in a
fresh ROOT and the table holds just those.

Experiment file format
----------------------
An experiment is a Python file defining ``get_experiment() -> Experiment``::

  from reparam_jax.sweeps.experiment import Experiment, Metric, Plot

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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reparam_jax.errors import exit_on_user_error
from reparam_jax.rundir.provenance import check_one_commit
from reparam_jax.sweeps.experiment import (
  check_configs,
  expand,
  load_experiment,
  run_waves,
  select_variants,
)
from reparam_jax.sweeps.html import write_page
from reparam_jax.sweeps.launchers import add_runner_flags, report, run_points, runner_kwargs
from reparam_jax.sweeps.points import split_overrides, validate_points
from reparam_jax.sweeps.resolve import resolve
from reparam_jax.sweeps.tables import render


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.ablate", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("experiment", help="experiments/<name>.py")
  parser.add_argument("--render-only", "--render_only", dest="render_only", action="store_true",
                      help="only re-render tables and plots from finished points")
  parser.add_argument("--seeds", type=int, default=None, help="override the experiment's seeds")
  parser.add_argument("--variant", action="append", default=[], metavar="LABEL",
                      help="only this row (repeatable), with the rows it references")
  add_runner_flags(parser)
  args, unknown = parser.parse_known_args(argv)
  extra = split_overrides(unknown, parser)
  exp = select_variants(load_experiment(args.experiment), args.variant)
  root = args.workdir or os.path.join("runs", "ablate", exp.name)

  # 1. Sizes from budgets (counted under eval_shape: nothing trains); 2. each searched
  # row's setting, chosen on the held-out split (short runs, successive halving).
  run = None if args.render_only else lambda wave: _run(wave, args)
  resolved = resolve(exp, root, extra, run)
  if not resolved.complete and not args.render_only:
    print("[ablate] tuning is not finished (points failed, queued or not run); the final "
          "runs wait for its choices: run the same command again")
    return 0 if args.dry_run else 1
  exp = resolved.experiment
  # 3. The reported runs: every row at the chosen setting, k seeds, evaluated once.
  points, entries = expand(exp, root, args.seeds, extra)
  status = 0
  if not args.render_only:
    check_configs(args.experiment, points, entries)
    if args.validate:
      validate_points(points, source=args.experiment)
    waves = run_waves(points)
    for i, wave in enumerate(waves):
      if i and not args.dry_run:
        # A failed or unfinished point holds back only the points that read its results.
        ready = [p for p in wave if all(q.done for q in points if q.workdir in
                                        p.overrides.values())]
        if len(ready) < len(wave):
          print(f"[ablate] {len(wave) - len(ready)} points need results of unfinished "
                "points; run the same command again once those finish")
        wave = ready
        if not wave:
          continue
      result = _run(wave, args)
      status = status or (0 if result.ok else 1)
      if result.submitted:
        print(f"[ablate] {len(result.submitted)} points submitted; run the same command again "
              "once they finish to fill the table")
    if args.dry_run:
      return 0
  # 4. The table, its plots and its page, from one commit's points unless told otherwise.
  check_one_commit(list(dict.fromkeys(e.point.workdir for e in entries if e.point.done)),
                   args.allow_mixed_commits)
  written = render(exp, entries, root, extra_columns=resolved.extra_columns)
  written.append(write_page(exp, entries, root, resolved.extra_columns))
  print((Path(root) / "table.md").read_text(encoding="utf-8"))
  for path in written:
    print(f"[ablate] wrote {path}")
  return status


def _run(wave: list, args: argparse.Namespace):
  result = run_points(wave, **runner_kwargs(args))
  report(result, len(wave), args.dry_run)
  return result


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    sys.exit(130)
