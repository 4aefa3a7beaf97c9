"""The machinery GPTQ and SparseGPT share: the damped inverse Hessian's Cholesky factor
and the row-by-row optimal-brain-surgeon sweep with lazy batch updates.

Both papers process the input dimension one index at a time (a *column* of torch's
[d_out, d_in] weight, a *row* of the project's `w_IxO`): round or prune that row, then
spread its error over the rows not yet processed with the row of U, the upper Cholesky
factor of H⁻¹ (Frantar et al. 2023, Alg. 1).  The updates inside a block of
`blocksize` rows are applied at once to the block and, at its end, to the rest in one
matmul ("lazy batch updates"), which is what makes it fast.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.linalg import lapack

from reparam_jax.compression.methods import LayerStats
from reparam_jax.errors import UserError


def damped_inverse_cholesky(w_IxO: np.ndarray, stats: LayerStats, damp: float,
                            where: str) -> tuple[np.ndarray, np.ndarray]:
  """(w with dead input rows zeroed, U) where Uᵀ U = (H + λI)⁻¹, U upper triangular.

  Dead inputs (H_ii = 0: an input the calibration set never excites) get H_ii = 1 and
  their weight row zeroed, as the reference implementations do; λ = damp · mean diag(H).
  """
  d_in = w_IxO.shape[0]
  h = np.array(stats.hessian_IxI, np.float64, copy=True)
  if h.shape != (d_in, d_in):
    raise UserError(f"{where}: the calibration Hessian is {h.shape}, the weight has "
                    f"d_in={d_in}")
  if damp < 0:
    raise UserError(f"{where}: damp={damp} must be ≥ 0 (0.01 is the papers' value)")
  w = np.array(w_IxO, np.float32, copy=True)
  dead = np.diag(h) == 0
  h[dead, dead] = 1.0
  w[dead] = 0.0
  h[np.diag_indices(d_in)] += damp * np.mean(np.diag(h))
  # H⁻¹ from H's Cholesky factor, then H⁻¹'s upper factor (the reference's cholesky,
  # cholesky_inverse, cholesky(upper=True)), with LAPACK's routines for each.
  factor, info = lapack.dpotrf(h, lower=0)
  if info == 0:
    h_inv, info = lapack.dpotri(factor, lower=0)  # the upper triangle of H⁻¹
  if info == 0:
    h_inv = np.triu(h_inv) + np.triu(h_inv, 1).T
    upper, info = lapack.dpotrf(h_inv, lower=0)
  if info != 0:
    raise UserError(f"{where}: the damped Hessian is not positive definite; raise damp "
                    f"(now {damp}) or calibrate on more tokens")
  return w, np.triu(upper).astype(np.float32)


def obs_sweep(w_IxO: np.ndarray, u_IxI: np.ndarray, blocksize: int,
              round_row: Callable[[int, np.ndarray], np.ndarray],
              block_start: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
              ) -> np.ndarray:
  """Processes the input rows in order with lazy batch updates; returns the result rows.

  `round_row(r, w_O)` → the row r's new value (rounded, or with pruned entries zeroed),
  called on the row as updated by every earlier row's error.  `block_start(i1, W1, U1)`
  is called with a block's current rows `W1` (a view that later updates change) and
  its U block before its rows are processed (SparseGPT chooses its mask there).
  """
  w = np.array(w_IxO, np.float32, copy=True)
  d_in = w.shape[0]
  out = np.empty_like(w)
  for i1 in range(0, d_in, blocksize):
    i2 = min(i1 + blocksize, d_in)
    block = w[i1:i2]  # a view: the updates below land in `w`
    u_block = u_IxI[i1:i2, i1:i2]
    err = np.empty_like(block)
    if block_start is not None:
      block_start(i1, block, u_block)
    for i in range(i2 - i1):
      q = round_row(i1 + i, block[i])
      out[i1 + i] = q
      err[i] = (block[i] - q) / u_block[i, i]
      block[i + 1:] -= np.outer(u_block[i, i + 1:], err[i])
    w[i2:] -= u_IxI[i1:i2, i2:].T @ err
  return out
