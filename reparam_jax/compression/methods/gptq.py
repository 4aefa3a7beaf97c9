"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", Alg. 1): round the input rows of `w_IxO` one at a time onto
the group grid and compensate each row's rounding error on the rows not yet rounded,
with the Cholesky factor of the damped inverse Hessian H = Σxᵀx; lazy batch updates of
128 rows (methods/_obs.py).

Groups: without act-order a group's scale and zero are found when the sweep reaches its
first row, from the rows as updated so far (the reference's default).  With act-order
(rows processed by decreasing H_ii) the groups stay the contiguous groups of the grid
and their scales and zeros are fixed from the weight before the sweep (the reference
implementation's `static_groups=True`); permuted groups would not be a group grid.
"""

from __future__ import annotations

import numpy as np

from reparam_jax.compression.methods import (
    METHODS, GroupGrid, LayerStats, MethodResult, check_grid, fitting_group, grid_params,
    quantize_with)
from reparam_jax.compression.methods._obs import damped_inverse_cholesky, obs_sweep

BLOCKSIZE = 128


def apply(w_IxO: np.ndarray, stats: LayerStats, bits: int = 4, group: int = 128,
          sym: bool = False, act_order: bool = False, damp: float = 0.01,
          static_groups: bool = False, blocksize: int = BLOCKSIZE) -> MethodResult:
  """GPTQ of one layer; `group=0`: one group per output column over all of d_in."""
  d_in, d_out = w_IxO.shape
  check_grid(bits, group, d_in, "gptq: ")
  perm = np.argsort(-np.diag(stats.hessian_IxI), kind="stable") if act_order \
      else np.arange(d_in)
  if act_order:
    w, u = damped_inverse_cholesky(w_IxO[perm], _permuted(stats, perm), damp, "gptq")
  else:
    w, u = damped_inverse_cholesky(w_IxO, stats, damp, "gptq")
  g = group or d_in
  n_groups = d_in // g
  scales = np.empty((n_groups, d_out), np.float32)
  zeros = np.empty_like(scales)
  fixed = act_order or static_groups or not group
  if fixed:  # every group's grid from the weight (dead rows zeroed) before any update
    w_original = np.empty_like(w)
    w_original[perm] = w
    for k in range(n_groups):
      scales[k], zeros[k] = grid_params(w_original[k * g:(k + 1) * g], bits, sym)
  # A group that starts inside a block must lie inside it (its grid is found from the
  # block's current rows): blocks of a multiple of the group size.
  if group and not fixed and blocksize % group:
    blocksize = group
  codes = np.empty((d_in, d_out), np.uint8)
  current = {}

  def block_start(i1, block, _):
    current["i1"], current["rows"] = i1, block

  def round_row(r, w_O):
    k = perm[r] // g
    if not fixed and r % g == 0:
      i = r - current["i1"]
      scales[k], zeros[k] = grid_params(current["rows"][i:i + g], bits, sym)
    c = quantize_with(w_O, scales[k], zeros[k], bits)
    codes[perm[r]] = c
    return (c.astype(np.float32) - zeros[k]) * scales[k]

  q = obs_sweep(w, u, blocksize, round_row, block_start)
  weight = np.empty_like(q)
  weight[perm] = q
  grid = GroupGrid(codes, scales, zeros, bits, group, sym)
  return MethodResult(weight.astype(np.float32), grid=grid)


def _permuted(stats: LayerStats, perm: np.ndarray) -> LayerStats:
  return LayerStats(stats.hessian_IxI[np.ix_(perm, perm)], stats.count, stats.abs_max_I[perm],
                    stats.abs_mean_I[perm], stats.samples_MxI[:, perm]
                    if np.size(stats.samples_MxI) else stats.samples_MxI)


METHODS["gptq"] = apply


def apply_factors(u_IxR: np.ndarray, v_OxR: np.ndarray, stats: LayerStats, bits: int = 4,
                  group: int = 128, sym: bool = False, damp: float = 0.01,
                  blocksize: int = BLOCKSIZE) -> tuple[GroupGrid, GroupGrid]:
  """GPTQ of a low-rank layer `x ↦ x U Vᵀ` (`lowrank`'s θ), each factor on its own grid:
  (grid of U [I, R], grid of V [O, R]), both in the stored layout, so `lowrank|packed`
  stores them.

  1. U is the weight of `x ↦ x U`: plain GPTQ on the layer's Hessian H (groups along I).
  2. V is refit to the rounded Û before it is rounded (GPTQ's idea, one factor later):
     Ṽᵀ = argmin ‖X U Vᵀ − X Û Ṽᵀ‖ = (ÛᵀHÛ + λI)⁻¹ ÛᵀH U Vᵀ, so the output error of step
     1 is absorbed where the rank allows; then Ṽᵀ [R, O] is rounded row by row with GPTQ's
     sweep on H₂ = ÛᵀHÛ (the Hessian of the factor's input x Û).  The grid is V's stored
     one (groups of `group` along O for each r; one group when `group` does not divide O),
     which GPTQ allows: each row's scales come from that row as updated so far.
  """
  d_in, rank = u_IxR.shape
  d_out = v_OxR.shape[0]
  u_result = apply(u_IxR, stats, bits=bits, group=group, sym=sym, damp=damp,
                   blocksize=blocksize)
  u_hat = u_result.weight_IxO.astype(np.float64)
  h = np.asarray(stats.hessian_IxI, np.float64)
  h2 = u_hat.T @ h @ u_hat
  lam = damp * max(np.mean(np.diag(h2)), 1e-30)
  target_RxO = u_hat.T @ h @ (u_IxR.astype(np.float64) @ v_OxR.T.astype(np.float64))
  v_fit_RxO = np.linalg.solve(h2 + lam * np.eye(rank), target_RxO).astype(np.float32)
  g = fitting_group(group, d_out)
  check_grid(bits, g, d_out, "gptq on lowrank's V: ")
  width = g or d_out
  n_groups = d_out // width
  codes_OxR = np.empty((d_out, rank), np.uint8)
  scales = np.empty((n_groups, rank), np.float32)
  zeros = np.empty_like(scales)

  def round_row(r, w_O):
    w_GxN = w_O.reshape(n_groups, width).T  # one column per group of outputs
    scales[:, r], zeros[:, r] = grid_params(w_GxN, bits, sym)
    c_GxN = quantize_with(w_GxN, scales[:, r], zeros[:, r], bits)
    codes_OxR[:, r] = c_GxN.T.reshape(d_out)
    return ((c_GxN.astype(np.float32) - zeros[:, r]) * scales[:, r]).T.reshape(d_out)

  stats2 = LayerStats(h2, stats.count, np.zeros(rank, np.float32), np.zeros(rank, np.float32),
                      np.zeros((0, rank), np.float32))
  w, u_chol = damped_inverse_cholesky(v_fit_RxO, stats2, damp, "gptq on lowrank's V")
  obs_sweep(w, u_chol, blocksize, round_row)
  return u_result.grid, GroupGrid(codes_OxR, scales, zeros, bits, g, sym)
