"""An ablation's static HTML page from its finished points: table, Pareto plots, learning curves.

  python -m reparam_jax.report_html experiments/<name>.py [--workdir=ROOT] [--variant=LABEL ...]
      [--seeds=N] [--out=PATH] [--check]

reads the points `python -m reparam_jax.ablate` ran into ROOT (default
``runs/ablate/<name>``; the same flags pick the same points) and writes
``ROOT/index.html``: one self-contained file that opens from disk in any
browser, no server (reparam_jax/sweeps/html.py says what it holds). Runs
nothing. ``--check`` then opens it in headless Chromium and fails (exit 1) on
any console message or script error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.sweeps.experiment import expand, load_experiment, select_variants
from reparam_jax.sweeps.html import (
  PAGE,
  find_chromium,
  page_html,
  render_in_chromium,
  write_page,
)
from reparam_jax.sweeps.points import split_overrides
from reparam_jax.sweeps.resolve import resolve


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.report_html", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("experiment", help="experiments/<name>.py")
  parser.add_argument("--workdir", default=None,
                      help="the ablation's root (default runs/ablate/<name>)")
  parser.add_argument("--seeds", type=int, default=None, help="as given to ablate")
  parser.add_argument("--variant", action="append", default=[], metavar="LABEL",
                      help="only this row (repeatable), with the rows it references")
  parser.add_argument("--out", default=None, help=f"write the page here, not ROOT/{PAGE}")
  parser.add_argument("--check", action="store_true",
                      help="open the page in headless Chromium; exit 1 on console errors")
  args, unknown = parser.parse_known_args(argv)
  extra = split_overrides(unknown, parser)  # ablate's --config.x=y: not part of point names
  exp = select_variants(load_experiment(args.experiment), args.variant)
  root = args.workdir or os.path.join("runs", "ablate", exp.name)
  if not Path(root).is_dir():
    raise UserError(f"{root} does not exist; run `python -m reparam_jax.ablate "
                    f"{args.experiment}` first or pass the --workdir it ran in")
  resolved = resolve(exp, root, extra)  # budgets and tuning choices: nothing runs
  exp = resolved.experiment
  _, entries = expand(exp, root, args.seeds, extra)
  if args.out:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page_html(exp, entries, resolved.extra_columns), encoding="utf-8")
  else:
    path = write_page(exp, entries, root, resolved.extra_columns)
  print(f"[report_html] wrote {path} ({path.stat().st_size:,} bytes)")
  if args.check:
    if find_chromium() is None:
      raise UserError("--check needs Chromium: apt-get install chromium, or set "
                      "REPARAM_CHROMIUM=/path/to/chrome")
    seen = render_in_chromium(path)
    for line in seen.console:
      print(f"[report_html] console: {line}")
    if seen.console or 'data-ready="1"' not in seen.dom:
      print("[report_html] the page logged to the console or its script did not finish")
      return 1
    print(f"[report_html] Chromium rendered it in {seen.seconds:.2f} s, console clean")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    sys.exit(130)
