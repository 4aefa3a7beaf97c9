"""Sparsity a magnitude threshold would give: exact zero counts per matrix and overall.

  python -m reparam_jax.regularizers.threshold --workdir=RUN [--thresholds=0,1e-4,1e-3,1e-2]

After L1 training, entries hover near zero rather than at it (Adam's
subgradient steps overshoot), so the sparsity L1 buys is read at a
threshold: |w| ≤ t counts as zero.  This prints, for each threshold, the
count and fraction of such entries in every matrix (ndim ≥ 2: kernels and
embeddings, as `config.reg.l1` penalizes) and in total.  Counts are of the
stored parameters of the checkpoint (θ for reparameterized weights).
The pruning itself (masks) is the sparsity package's job.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import jax
import numpy as np

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.rundir import checkpoint

PyTree = Any


def _leaves(params: PyTree) -> list[tuple[str, np.ndarray]]:
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    a = np.asarray(jax.device_get(getattr(leaf, "value", leaf)))
    if a.ndim >= 2:
      out.append(("/".join(str(getattr(k, "key", k)) for k in path), a))
  return out


def threshold_counts(params: PyTree, thresholds: Sequence[float]
                     ) -> list[dict[str, Any]]:
  """Rows `{threshold, path, zeros, size}` per matrix, then a `path='total'` row."""
  rows = []
  leaves = _leaves(params)
  for t in thresholds:
    total_zeros = total_size = 0
    for path, a in leaves:
      zeros = int(np.count_nonzero(np.abs(a) <= t))
      rows.append({"threshold": float(t), "path": path, "zeros": zeros, "size": int(a.size)})
      total_zeros += zeros
      total_size += int(a.size)
    rows.append({"threshold": float(t), "path": "total", "zeros": total_zeros,
                 "size": total_size})
  return rows


def format_rows(rows: list[dict[str, Any]], per_layer: bool = True) -> str:
  lines = [f"{'threshold':>10}  {'path':<40} {'zeros':>10} {'size':>10} {'sparsity':>9}"]
  for r in rows:
    if per_layer or r["path"] == "total":
      lines.append(f"{r['threshold']:>10.0e}  {r['path']:<40} {r['zeros']:>10,} "
                   f"{r['size']:>10,} {r['zeros'] / max(r['size'], 1):>9.2%}")
  return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str]) -> list[dict[str, Any]]:
  flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
  if "workdir" not in flags:
    raise UserError("missing --workdir=RUN (a training workdir or params checkpoint)")
  try:
    thresholds = [float(x) for x in flags.get("thresholds", "0,1e-4,1e-3,1e-2").split(",")]
  except ValueError:
    raise UserError(f"--thresholds={flags['thresholds']!r}: expected numbers separated by commas"
                    ) from None
  rows = threshold_counts(checkpoint.load_params(flags["workdir"]), thresholds)
  print(format_rows(rows, per_layer=flags.get("per_layer", "true") != "false"))
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
