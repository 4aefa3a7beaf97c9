"""Run every point of a config's sweep, each in its own workdir; resumable.

Usage (from the repository root)::

  python -m reparam_jax.sweep --config=configs/x.py[:arg] --workdir=ROOT \
      [--parallel=N] [--seeds=N] [--dry-run] [--launcher=local|slurm|tpu] \
      [--launcher_args="..."] [--train_module=reparam_jax.train] [--config.a.b=v ...]

The sweep is the config file's ``get_sweep(hyper)`` (``hyper`` is
`reparam_jax.sweeps.hyper`; a config without one is a single point). Each point
runs ``python -m reparam_jax.train --config=... --workdir=ROOT/<name>
--config.k=v ...`` where ``<name>`` is built from the point's overrides, e.g.
``reparam.rank=16,seed=1`` (keys sorted, ``config`` first and ``seed`` last,
characters outside ``[A-Za-z0-9._,=+@-]`` replaced by ``_``; a point with no
overrides is ``base``). ``--config.a.b=v`` given to the sweep applies to every
point and is not part of the names.

Resuming: a point whose workdir holds ``done.json`` is skipped; any other point
is (re-)run in the same workdir, where the trainer resumes from its checkpoint.
Each point's stdout/stderr are appended to ``ROOT/<name>/log.txt``; the
overrides and command are recorded in ``ROOT/<name>/point.json``. Failed points
are listed at the end with their logs and the exit status is 1.

Launchers: ``local`` runs the trainer here (``--parallel=N`` subprocesses;
``--gpus=0,1,2,3`` splits GPUs between them). ``slurm`` submits the points
that are neither done nor queued as one job array (``ROOT/slurm/array_*.txt``,
one point per line; ``--array_limit=K`` tasks at a time) through
``launch/slurm.sh`` and returns; ``tpu`` spreads the points over the pods of
``--tpu_names=a,b`` (or the one ``--name=`` in ``--launcher_args``), each pod
set up once and running its share one after another, through
``launch/tpu_pod.sh`` (deleted at the end unless ``--tpu_keep``).
``--launcher_args`` is passed to the launch script, e.g.
``--launcher_args="--nodes=2 --gpus-per-node=8 --partition=gpu"``.

Retries: a failed point is retried up to ``--max_retries`` times (default 2;
exit status 2, a config error, never): locally and on TPUs in the same call,
on SLURM by the next call of the command (attempts counted in point.json).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reparam_jax.errors import exit_on_user_error
from reparam_jax.sweeps import hyper
from reparam_jax.sweeps.launchers import add_runner_flags, report, run_points, runner_kwargs
from reparam_jax.sweeps.points import get_sweep, make_points, split_overrides, validate_points


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.sweep", allow_abbrev=False,
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
  parser.add_argument("--seeds", type=int, default=None,
                      help="repeat every point for seeds 0..N-1 (unless the sweep sets seed)")
  add_runner_flags(parser)
  args, unknown = parser.parse_known_args(argv)
  extra = split_overrides(unknown, parser)
  if not args.workdir:
    parser.error("--workdir is required")
  sweep = get_sweep(args.config)
  if args.seeds:
    sweep = hyper.with_seeds(sweep, args.seeds)
  points = make_points(sweep, args.config, args.workdir, extra)
  if args.validate:
    validate_points(points, source=args.config)
  result = run_points(points, **runner_kwargs(args))
  report(result, len(points), args.dry_run)
  return 0 if result.ok else 1


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    sys.exit(130)
