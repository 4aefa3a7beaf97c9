"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot"): prune the input rows of `w_IxO` one at a time and
compensate each row's pruning error on the rows not yet processed, with the same
inverse-Hessian Cholesky sweep as GPTQ (methods/_obs.py).

The mask is chosen by the OBS saliency w² / [U_ii]² (U: the upper Cholesky factor of
H⁻¹, so [U_ii]² is the paper's [H⁻¹]_ii of the remaining rows): unstructured, once per
block of 128 rows over all of the block's entries (the `int(p · entries)` lowest are
pruned; the reference prunes one more, `<=` its threshold); N:M, per output column
over each M consecutive input rows, chosen when the sweep reaches the group.
"""

from __future__ import annotations

import numpy as np

from reparam_jax.compression.methods import METHODS, LayerStats, MethodResult
from reparam_jax.compression.methods._obs import damped_inverse_cholesky, obs_sweep
from reparam_jax.errors import UserError

BLOCKSIZE = 128


def parse_sparsity(sparsity: float | str, where: str) -> tuple[float, int, int]:
  """(p, n, m): unstructured fraction p, or n pruned of every m ('2:4' → n=2, m=4)."""
  if isinstance(sparsity, str) and ":" in sparsity:
    try:
      n, m = (int(v) for v in sparsity.split(":"))
    except ValueError:
      n = m = 0
    if not 0 < n < m:
      raise UserError(f"{where}: sparsity {sparsity!r}: write N:M with 0 < N < M, e.g. '2:4'")
    return n / m, n, m
  try:
    p = float(sparsity)
  except (TypeError, ValueError):
    p = -1.0
  if not 0 <= p < 1:
    raise UserError(f"{where}: sparsity {sparsity!r}: a fraction in [0, 1) or N:M like '2:4'")
  return p, 0, 0


def apply(w_IxO: np.ndarray, stats: LayerStats, sparsity: float | str = 0.5,
          damp: float = 0.01, blocksize: int = BLOCKSIZE) -> MethodResult:
  p, n, m = parse_sparsity(sparsity, "sparsegpt")
  d_in = w_IxO.shape[0]
  if m and d_in % m:
    raise UserError(f"sparsegpt: {n}:{m} needs d_in={d_in} divisible by {m}")
  if m and blocksize % m:
    blocksize = m * max(1, blocksize // m)
  w, u = damped_inverse_cholesky(w_IxO, stats, damp, "sparsegpt")
  pruned = np.zeros(w.shape, bool)
  current = {}

  def block_start(i1, block, u_block):
    current["i1"], current["rows"], current["u"] = i1, block, u_block
    if m:
      return
    saliency = block ** 2 / np.diag(u_block)[:, None] ** 2
    k = int(saliency.size * p)
    order = np.argsort(saliency, axis=None, kind="stable")[:k]
    pruned[i1:i1 + len(block)].flat[order] = True

  def round_row(r, w_O):
    if m and r % m == 0:
      i = r - current["i1"]
      rows, u_diag = current["rows"][i:i + m], np.diag(current["u"])[i:i + m]
      saliency = rows ** 2 / u_diag[:, None] ** 2  # [m, d_out]
      lowest = np.argsort(saliency, axis=0, kind="stable")[:n]  # per output column
      np.put_along_axis(pruned[r:r + m], lowest, True, axis=0)
    return np.where(pruned[r], 0.0, w_O).astype(np.float32)

  weight = obs_sweep(w, u, blocksize, round_row, block_start)
  return MethodResult(weight, mask_IxO=~pruned)


METHODS["sparsegpt"] = apply
