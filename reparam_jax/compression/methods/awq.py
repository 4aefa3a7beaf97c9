"""AWQ (Lin et al. 2024, "Activation-aware Weight Quantization"): protect salient input
channels by scaling them up before round-to-nearest.

The weights that meet large activations matter most; scaling input channel j of the weight
by s_j > 1 (and the input by 1/s_j) shrinks their relative rounding error.  AWQ takes
s = mean|x|^α and searches α on a grid of `n_grid` points in [0, 1) for the smallest
output error on calibration inputs (the reference `auto_scale`):

    s(α) = mean|x|^α, floored at 1e-4, normalized by sqrt(max s · min s)
    loss(α) = mean (x @ w − (x / s) @ Q(diag(s)·w))²

with Q the group-grid round-to-nearest (`methods.rtn`).  Then, optionally (`clip`, the
reference `auto_clip`), the range of each (group, output column) of diag(s)·w is shrunk to
the fraction in {1, 0.95, …, 1 − max_shrink + 0.05} of its max |w| that minimizes that
group's output error on x / s.  With `quantizer="gptq"` the scaled weight is then
rounded by GPTQ (methods/gptq.py) on the Hessian of x / s instead of RTN (AWQ then GPTQ,
as llm-compressor chains them; no clip search then).  The layer computes (x / s) @ deq(grid): the `smooth` stage
(reparam/transforms/smooth.py) carries 1/s; the paper folds it into the previous op.

`apply_joint` searches one s for several layers that read the same input (q, k, v after one
LayerNorm), with the loss over all their outputs together; docs/awq_smoothquant.md says
what differs from the reference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reparam_jax.compression.methods import (METHODS, LayerStats, MethodResult, check_grid,
                                             gptq, grid_params, quantize_with, rtn)
from reparam_jax.errors import UserError


def fake_rtn(w_IxO: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
  """`rtn(w).dequantize()` computed for all groups at once (the search calls it often)."""
  d_in, d_out = w_IxO.shape
  g = group or d_in
  n = d_in // g
  # One group's rows side by side: [g, n·d_out], so `grid_params` sees a column per
  # (group, output column), exactly the columns `rtn` quantizes one group at a time.
  w_GxNO = w_IxO.reshape(n, g, d_out).transpose(1, 0, 2).reshape(g, n * d_out)
  scale, zero = grid_params(w_GxNO, bits, symmetric)
  codes = quantize_with(w_GxNO, scale, zero, bits)
  deq = ((codes.astype(np.float32) - zero) * scale).astype(np.float32)
  return deq.reshape(g, n, d_out).transpose(1, 0, 2).reshape(d_in, d_out)


def scales_for(abs_mean_I: np.ndarray, ratio: float) -> np.ndarray:
  """The reference's s(α) = mean|x|^α, floored at 1e-4, divided by sqrt(max · min)."""
  s = np.maximum(np.power(abs_mean_I.astype(np.float64), ratio), 1e-4)
  return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search_scale(weights_IxO: Sequence[np.ndarray], x_MxI: np.ndarray, abs_mean_I: np.ndarray,
                 bits: int, group: int, symmetric: bool, n_grid: int = 20
                 ) -> tuple[np.ndarray, float, list[float]]:
  """(best s, its α, the loss at every α): the α in {0, 1/n_grid, …} whose s minimizes the
  mean squared error of all layers' outputs on `x_MxI` (the first best on a tie)."""
  refs = [x_MxI @ w for w in weights_IxO]
  size = sum(r.size for r in refs)
  best, best_ratio, best_loss, history = None, -1.0, np.inf, []
  for k in range(n_grid):
    ratio = k / n_grid
    s = scales_for(abs_mean_I, ratio)
    sq = 0.0
    for w, ref in zip(weights_IxO, refs):
      w_eff = fake_rtn(s[:, None] * w, bits, group, symmetric) / s[:, None]
      sq += float(np.sum(np.square((x_MxI @ w_eff - ref).astype(np.float64))))
    loss = sq / size
    history.append(loss)
    if loss < best_loss:
      best, best_ratio, best_loss = s, ratio, loss
  return best, best_ratio, history


def search_clip(w_IxO: np.ndarray, x_MxI: np.ndarray, bits: int, group: int, symmetric: bool,
                n_grid: int = 20, max_shrink: float = 0.5) -> np.ndarray:
  """max|w| per (group, output column) [n_groups, d_out] after the reference's clip search:
  w clamped to ±(1 − i/n_grid)·max|w| for i < max_shrink·n_grid, the smallest error of
  that group's share of the output, x_g @ (Q(clamped) − w)."""
  d_in, d_out = w_IxO.shape
  g = group or d_in
  n = d_in // g
  w_NxGxO = w_IxO.reshape(n, g, d_out)
  x_NxMxG = x_MxI.reshape(x_MxI.shape[0], n, g).transpose(1, 0, 2)
  org_max = np.abs(w_NxGxO).max(axis=1)  # [n, d_out]
  best_max, best_err = org_max.copy(), np.full_like(org_max, np.inf, dtype=np.float64)
  for i in range(int(max_shrink * n_grid)):
    max_val = org_max * (1 - i / n_grid)
    clamped = np.clip(w_NxGxO, -max_val[:, None], max_val[:, None]).reshape(d_in, d_out)
    q = fake_rtn(clamped, bits, group, symmetric).reshape(n, g, d_out)
    diff_NxMxO = x_NxMxG @ (q - w_NxGxO)  # each group's share of the output error
    # Σ over tokens as one contraction (float32, as the reference): a float64 copy of the
    # [groups, tokens, d_out] errors costs more than the whole rest of the step.
    err = np.einsum("nmo,nmo->no", diff_NxMxO, diff_NxMxO) / x_MxI.shape[0]
    better = err < best_err
    best_err = np.where(better, err, best_err)
    best_max = np.where(better, max_val, best_max)
  return best_max.astype(np.float32)


QUANTIZERS = ("rtn", "gptq")


def scaled_stats(stats: LayerStats, s_I: np.ndarray) -> LayerStats:
  """The statistics of x / s, the input of the scaled layer (for GPTQ after the scales)."""
  s64 = s_I.astype(np.float64)
  return LayerStats(hessian_IxI=stats.hessian_IxI / np.outer(s64, s64), count=stats.count,
                    abs_max_I=stats.abs_max_I / s64, abs_mean_I=stats.abs_mean_I / s64,
                    samples_MxI=(stats.samples_MxI / s_I).astype(np.float32))


def _check(stats: LayerStats, weights_IxO: Sequence[np.ndarray], bits: int, group: int,
           n_grid: int, max_shrink: float, quantizer: str, clip: bool) -> None:
  if quantizer not in QUANTIZERS:
    raise UserError(f"awq: quantizer={quantizer!r}; use 'rtn' or 'gptq'")
  if quantizer == "gptq" and clip:
    raise UserError("awq: clip=True searches clipping on the round-to-nearest grid; with "
                    "quantizer='gptq' leave clip unset (GPTQ sets its own grid)")
  d_in = stats.abs_mean_I.shape[0]
  for w in weights_IxO:
    if w.ndim != 2 or w.shape[0] != d_in:
      raise UserError(f"awq: a weight of shape {w.shape} does not read the calibrated input of "
                      f"{d_in} channels; pass [d_in, d_out] kernels of that layer")
    check_grid(bits, group, d_in, "awq: ")
  if stats.samples_MxI is None or not len(stats.samples_MxI):
    raise UserError("awq: the layer's calibration statistics hold no input samples "
                    "(samples_MxI) to search the scales on; calibrate with samples kept")
  if not (isinstance(n_grid, int) and n_grid > 0):
    raise UserError(f"awq: n_grid={n_grid!r}; expected a positive integer (20 in the paper)")
  if not 0 <= max_shrink < 1:
    raise UserError(f"awq: max_shrink={max_shrink}; expected a fraction in [0, 1) (0.5 in the "
                    "reference)")


def apply_joint(weights_IxO: Sequence[np.ndarray], stats: LayerStats, bits: int = 4,
                group: int = 128, symmetric: bool = False, n_grid: int = 20,
                clip: bool | None = None, max_shrink: float = 0.5, quantizer: str = "rtn",
                damp: float = 0.01) -> list[MethodResult]:
  """AWQ of the layers in `weights_IxO`, which all read the input `stats` describe, with one
  searched s; each result's grid holds clip(diag(s)·w) and its `weight_IxO` is
  diag(1/s)·deq(grid), what the layer computes with.  `clip` defaults to True with RTN;
  `damp` is GPTQ's (quantizer='gptq')."""
  weights_IxO = [np.asarray(w, np.float32) for w in weights_IxO]
  clip = (quantizer == "rtn") if clip is None else clip
  _check(stats, weights_IxO, bits, group, n_grid, max_shrink, quantizer, clip)
  x_MxI = np.asarray(stats.samples_MxI, np.float32)
  s, _, _ = search_scale(weights_IxO, x_MxI, stats.abs_mean_I, bits, group, symmetric, n_grid)
  out = []
  for w in weights_IxO:
    scaled = s[:, None] * w
    if clip:
      # The reference searches the clip on the scaled layer: weight s·w, input x / s.
      max_val = search_clip(scaled, x_MxI / s, bits, group, symmetric, n_grid, max_shrink)
      rows = np.arange(scaled.shape[0]) // (group or scaled.shape[0])
      scaled = np.clip(scaled, -max_val[rows], max_val[rows])
    if quantizer == "gptq":
      grid = gptq.apply(scaled, scaled_stats(stats, s), bits=bits, group=group, sym=symmetric,
                        damp=damp).grid
    else:
      grid = rtn(scaled, bits, group, symmetric)
    out.append(MethodResult(weight_IxO=(grid.dequantize() / s[:, None]).astype(np.float32),
                            grid=grid, input_scale_I=s))
  return out


def apply(w_IxO: np.ndarray, stats: LayerStats, bits: int = 4, group: int = 128,
          symmetric: bool = False, n_grid: int = 20, clip: bool | None = None,
          max_shrink: float = 0.5, quantizer: str = "rtn", damp: float = 0.01) -> MethodResult:
  """AWQ of one layer (see `apply_joint` for layers sharing an input)."""
  return apply_joint([w_IxO], stats, bits=bits, group=group, symmetric=symmetric,
                     n_grid=n_grid, clip=clip, max_shrink=max_shrink, quantizer=quantizer,
                     damp=damp)[0]


METHODS["awq"] = apply
