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
import sys
from typing import Sequence

from reparam_jax.errors import exit_on_user_error
from reparam_jax.sweeps.plots import DEFAULT_METRICS, plot_curves


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
