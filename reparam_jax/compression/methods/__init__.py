"""Calibration-based compression methods, one file each, registered in `METHODS`.

Every method is a pure function of one linear layer's weight and the statistics of
that layer's inputs on the calibration set; `compression/calibration.py` runs the
model block by block, accumulates the statistics and calls the method on each
selected kernel.  Layouts are the project's: a weight is `w_IxO` ([d_in, d_out],
`y = x @ w`), calibration inputs are rows `x_NxI`.

A quantized weight is held on the *group grid* below (GPTQ's and AWQ's grid, what
`compressed-tensors` calls pack-quantized with group scales): groups of `group`
consecutive input rows share one scale (and, asymmetric, one zero point) per output
column, codes are unsigned integers in [0, 2^bits − 1], and

    w ≈ (codes − zeros) · scales        (zeros = 2^(bits−1) when symmetric)

`group = 0` means one group over all of d_in (per output channel).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from reparam_jax.errors import UserError


@dataclasses.dataclass
class LayerStats:
  """What the calibration set says about one linear layer's input x (rows of `x_NxI`).

  hessian_IxI: Σ xᵀx over calibration tokens, float64 (GPTQ's and SparseGPT's H is
    2·hessian/count; their dampening is relative, so the factor does not matter).
  count: how many tokens were summed.
  abs_max_I: max |x_i| over tokens (SmoothQuant).
  abs_mean_I: mean |x_i| over tokens (AWQ's activation scale).
  samples_MxI: a seeded subsample of input rows, for methods that search on the layer's
    output (AWQ); may be empty.
  """

  hessian_IxI: np.ndarray
  count: int
  abs_max_I: np.ndarray
  abs_mean_I: np.ndarray
  samples_MxI: np.ndarray

  @property
  def sq_norm_I(self) -> np.ndarray:
    """‖X_i‖² over the calibration tokens (Wanda's feature norm, squared)."""
    return np.diag(self.hessian_IxI).copy()


@dataclasses.dataclass
class GroupGrid:
  """A weight on the group grid (module docstring): codes [d_in, d_out] uint8, scales and
  zeros [n_groups, d_out] (float32, zeros as floats holding integers)."""

  codes: np.ndarray
  scales: np.ndarray
  zeros: np.ndarray
  bits: int
  group: int
  symmetric: bool

  def dequantize(self) -> np.ndarray:
    g = self.group or self.codes.shape[0]
    rows = np.arange(self.codes.shape[0]) // g
    return ((self.codes.astype(np.float32) - self.zeros[rows]) * self.scales[rows]).astype(
        np.float32)


def check_grid(bits: int, group: int, d_in: int, where: str = "") -> None:
  """One-line errors for a grid the layer cannot have."""
  if bits not in (2, 3, 4, 8):
    raise UserError(f"{where}bits={bits}: use 2, 3, 4 or 8")
  if group < 0 or (group and d_in % group):
    raise UserError(f"{where}group={group} does not divide d_in={d_in}; use a divisor, or 0 "
                    "for one group per output column")


def fitting_group(group: int, d_in: int) -> int:
  """`group` where it divides `d_in`, else 0 (one group over all of d_in): the grid a
  factor of another shape than the layer gets (`gptq.apply_factors`, `rtn` after svd)."""
  return group if group and d_in % group == 0 else 0


def grid_params(w_GxO: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
  """(scale, zero) per column of the rows `w_GxO` of one group: min–max (asymmetric) or
  max-|w| (symmetric) round-to-nearest, as GPTQ's and AWQ's reference quantizers."""
  top = 2 ** bits - 1
  if symmetric:
    amax = np.abs(w_GxO).max(axis=0)
    scale = 2 * amax / top
    zero = np.full_like(scale, (top + 1) / 2)
  else:
    lo, hi = np.minimum(w_GxO.min(axis=0), 0), np.maximum(w_GxO.max(axis=0), 0)
    scale = (hi - lo) / top
    zero = np.round(-lo / np.where(scale > 0, scale, 1))
  scale = np.where(scale > 0, scale, 1.0)  # an all-zero column: any scale, codes = zero
  return scale.astype(np.float32), zero.astype(np.float32)


def quantize_with(w_GxO: np.ndarray, scale_O: np.ndarray, zero_O: np.ndarray,
                  bits: int) -> np.ndarray:
  """The codes of rows `w_GxO` on one group's grid."""
  return np.clip(np.round(w_GxO / scale_O) + zero_O, 0, 2 ** bits - 1).astype(np.uint8)


def rtn(w_IxO: np.ndarray, bits: int, group: int = 128, symmetric: bool = False) -> GroupGrid:
  """Round-to-nearest on the group grid: the baseline every calibration method beats."""
  d_in, d_out = w_IxO.shape
  check_grid(bits, group, d_in)
  g = group or d_in
  codes = np.empty((d_in, d_out), np.uint8)
  scales = np.empty((d_in // g, d_out), np.float32)
  zeros = np.empty_like(scales)
  for k in range(d_in // g):
    rows = slice(k * g, (k + 1) * g)
    scales[k], zeros[k] = grid_params(w_IxO[rows], bits, symmetric)
    codes[rows] = quantize_with(w_IxO[rows], scales[k], zeros[k], bits)
  return GroupGrid(codes, scales, zeros, bits, group, symmetric)


# name → module with `apply(w_IxO, stats, **options) -> MethodResult`; each method file
# adds itself here (one line), and the compress recipe offers every name as a step.
METHODS: dict[str, Any] = {}


@dataclasses.dataclass
class MethodResult:
  """A method's answer for one layer.

  weight_IxO: the effective float weight (what the layer computes with), always set.
  grid: the weight on the group grid, for quantizing methods (None otherwise).
  mask_IxO: the kept entries (bool), for pruning methods (None otherwise).
  input_scale_I: a per-input-channel factor s the method moved into the weight
    (AWQ, SmoothQuant: the layer computes (x / s) @ (s·w)); None if none.
  """

  weight_IxO: np.ndarray
  grid: GroupGrid | None = None
  mask_IxO: np.ndarray | None = None
  input_scale_I: np.ndarray | None = None
