"""Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
Models"): prune by |w_ij| · ‖X_i‖ (the weight times its input feature's norm over the
calibration tokens), compared per output: within each output column of `w_IxO` (an
output row in torch's layout), the `int(p · d_in)` lowest are pruned; N:M prunes the
N lowest of every M consecutive inputs of each output.  No weight update.

`compare="layer"` ranks the scores of the whole layer together instead (the paper's
ablation of the comparison group, its Table 7: per output is what makes Wanda work on
LLaMA; a small model without outlier features may prefer per layer).
"""

from __future__ import annotations

import numpy as np

from reparam_jax.compression.methods import METHODS, LayerStats, MethodResult
from reparam_jax.compression.methods.sparsegpt import parse_sparsity
from reparam_jax.errors import UserError


def apply(w_IxO: np.ndarray, stats: LayerStats, sparsity: float | str = 0.5,
          compare: str = "output") -> MethodResult:
  p, n, m = parse_sparsity(sparsity, "wanda")
  if compare not in ("output", "layer"):
    raise UserError(f"wanda: compare={compare!r}; use 'output' (the paper's) or 'layer'")
  if m and compare != "output":
    raise UserError(f"wanda: compare={compare!r} with {n}:{m}; N:M groups are per output")
  d_in, d_out = w_IxO.shape
  w = np.asarray(w_IxO, np.float32)
  score = np.abs(w) * np.sqrt(stats.sq_norm_I)[:, None]
  if m:
    if d_in % m:
      raise UserError(f"wanda: {n}:{m} needs d_in={d_in} divisible by {m}")
    groups = score.reshape(d_in // m, m, d_out)
    lowest = np.argsort(groups, axis=1, kind="stable")[:, :n]
    pruned = np.zeros(groups.shape, bool)
    np.put_along_axis(pruned, lowest, True, axis=1)
    pruned = pruned.reshape(d_in, d_out)
  elif compare == "layer":
    lowest = np.argsort(score, axis=None, kind="stable")[:int(d_in * d_out * p)]
    pruned = np.zeros(d_in * d_out, bool)
    pruned[lowest] = True
    pruned = pruned.reshape(d_in, d_out)
  else:
    lowest = np.argsort(score, axis=0, kind="stable")[:int(d_in * p)]
    pruned = np.zeros((d_in, d_out), bool)
    np.put_along_axis(pruned, lowest, True, axis=0)
  return MethodResult(np.where(pruned, 0.0, w).astype(np.float32), mask_IxO=~pruned)


METHODS["wanda"] = apply
