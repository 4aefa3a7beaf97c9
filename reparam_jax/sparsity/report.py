"""Per-layer and global sparsity of a model's effective weights (exact counts).

  python -m reparam_jax.sparsity.report --workdir=RUN [--regex='.*/kernel']

Counts zeros of the *effective* weight (θ → W with the masks applied), so it
covers masks, L1-thresholded weights and folded checkpoints alike; `masked`
counts the entries a mask removes (0 where there is no mask).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from reparam_jax.errors import exit_on_user_error
from reparam_jax.pytree.paths import dict_leaves
from reparam_jax.reparam import Reparam
from reparam_jax.rundir.workdir import load_run

PyTree = Any
DEFAULT_REGEX = r".*/kernel"


def sparsity_rows(params: PyTree, rp: Reparam, masks: PyTree | None = None,
                  regex: str = DEFAULT_REGEX) -> list[dict[str, Any]]:
  """One row per weight matching `regex` (path, size, zeros, sparsity), then 'global'."""
  dense = rp.to_dense(meta.unbox(params), masks)
  pattern = re.compile(regex)
  rows = []
  for path, w in dict_leaves(dense):
    if not pattern.fullmatch(path):
      continue
    size = int(np.size(w))
    zeros = size - int(jnp.count_nonzero(w))  # where `w` lives: it may span several hosts
    rows.append(dict(path=path, size=size, zeros=zeros, sparsity=zeros / max(size, 1)))
  size = sum(r["size"] for r in rows)
  zeros = sum(r["zeros"] for r in rows)
  rows.append(dict(path="global", size=size, zeros=zeros, sparsity=zeros / max(size, 1)))
  return rows


def format_sparsity(rows: list[dict[str, Any]]) -> str:
  width = max(len(r["path"]) for r in rows)
  lines = [f"{'weight'.ljust(width)}  {'size':>10}  {'zeros':>10}  {'sparsity':>8}"]
  lines.append("-" * len(lines[0]))
  for r in rows:
    if r["path"] == "global":
      lines.append("-" * len(lines[0]))
    lines.append(f"{r['path'].ljust(width)}  {r['size']:>10,}  {r['zeros']:>10,}  "
                 f"{r['sparsity']:>8.4f}")
  return "\n".join(lines)


def threshold_sweep(params: PyTree, thresholds: Sequence[float], rp: Reparam,
                    masks: PyTree | None = None, regex: str = DEFAULT_REGEX
                    ) -> list[dict[str, Any]]:
  """L1-induced sparsification: the sparsity reached by zeroing |w| ≤ τ, for each τ.

  Rows: threshold, zeros, size, sparsity (global over the weights matching `regex`).
  """
  dense = rp.to_dense(meta.unbox(params), masks)
  pattern = re.compile(regex)
  ws = [np.abs(np.asarray(jax.device_get(w))).ravel() for p, w in dict_leaves(dense)
        if pattern.fullmatch(p)]
  flat = np.concatenate(ws) if ws else np.zeros((0,))
  rows = []
  for t in thresholds:
    zeros = int(np.count_nonzero(flat <= t))
    rows.append(dict(threshold=float(t), zeros=zeros, size=int(flat.size),
                     sparsity=zeros / max(flat.size, 1)))
  return rows


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.sparsity.report")
  parser.add_argument("--workdir", required=True, help="training workdir or compress output")
  parser.add_argument("--regex", default=DEFAULT_REGEX)
  parser.add_argument("--thresholds", default="",
                      help="comma-separated τ: also report the sparsity of zeroing |w| ≤ τ")
  args = parser.parse_args(argv)
  run = load_run(args.workdir)
  rp = Reparam.from_config(run.config.reparam)
  text = format_sparsity(sparsity_rows(run.params, rp, run.masks, args.regex))
  if args.thresholds:
    taus = [float(t) for t in args.thresholds.split(",")]
    sweep = threshold_sweep(run.params, taus, rp, run.masks, args.regex)
    text += "\n\nthreshold  zeros / size  sparsity\n" + "\n".join(
        f"{r['threshold']:<9g}  {r['zeros']:,} / {r['size']:,}  {r['sparsity']:.4f}" for r in sweep)
  print(text)
  return text


if __name__ == "__main__":
  main(sys.argv[1:])
