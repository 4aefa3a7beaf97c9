"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weight, then W8A8.

A few input channels of a transformer's linear layers carry activations 10–100× larger
than the rest, so per-token int8 activations lose the small channels.  SmoothQuant
divides input channel j by

    s_j = max|X_j|^α / max|W_j|^(1−α)        (α = 0.5 default, the migration strength)

and multiplies row j of the weight by it (W_j is row j of our [d_in, d_out] kernel: the
weights that input channel j meets), which leaves x @ w unchanged:
(x / s) @ (diag(s)·w).  Then the weight is quantized to int8 per output channel
(symmetric) and x / s to int8 per token, dynamically, at run time.

Here the layer keeps 1/s itself (the `smooth` stage, reparam/transforms/smooth.py:
`quant(bits=8, act_bits=8)|smooth` is the W8A8 layer); the paper folds it into the
LayerNorm before the layer.  Layers that read the same input (q, k, v after one LayerNorm)
share one s in the paper: `apply_joint` takes max|W_j| over all of them, as the reference
`smooth_ln_fcs` does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reparam_jax.compression.methods import METHODS, GroupGrid, LayerStats, MethodResult
from reparam_jax.errors import UserError

# The reference's floor on max|W_j| and on s (smooth.py, `clamp(min=1e-5)`): a dead input
# channel gets a tiny finite scale instead of 0 or inf.
FLOOR = 1e-5


def smooth_scales(abs_max_I: np.ndarray, weights_IxO: Sequence[np.ndarray],
                  alpha: float = 0.5) -> np.ndarray:
  """s = max|X|^α / max|W|^(1−α) per input channel, max|W| over the rows of all `weights_IxO`."""
  w_max_I = np.max([np.abs(w).max(axis=1) for w in weights_IxO], axis=0)
  w_max_I = np.maximum(w_max_I, FLOOR)
  s = np.power(np.abs(abs_max_I).astype(np.float64), alpha) / np.power(w_max_I, 1 - alpha)
  return np.maximum(s, FLOOR).astype(np.float32)


def int8_per_channel(w_IxO: np.ndarray) -> GroupGrid:
  """Symmetric int8 per output column, the grid of `quant(bits=8)` and `qweight`:
  scale = max|w| / 127, values round(w / scale) in [−127, 127], stored as codes + 128."""
  amax = np.abs(w_IxO).max(axis=0)
  scale = np.where(amax > 0, amax / 127, 1.0).astype(np.float32)
  q = np.clip(np.round(w_IxO / scale), -127, 127)
  return GroupGrid(codes=(q + 128).astype(np.uint8), scales=scale[None],
                   zeros=np.full((1, w_IxO.shape[1]), 128, np.float32), bits=8, group=0,
                   symmetric=True)


def _check(stats: LayerStats, weights_IxO: Sequence[np.ndarray], alpha: float) -> None:
  if not 0 <= alpha <= 1:
    raise UserError(f"smoothquant: alpha={alpha} must be in [0, 1] (0.5 is the paper's default; "
                    "larger moves more of the activations' range into the weights)")
  d_in = stats.abs_max_I.shape[0]
  for w in weights_IxO:
    if w.ndim != 2 or w.shape[0] != d_in:
      raise UserError(f"smoothquant: a weight of shape {w.shape} does not read the calibrated "
                      f"input of {d_in} channels; pass [d_in, d_out] kernels of that layer")


def apply_joint(weights_IxO: Sequence[np.ndarray], stats: LayerStats, alpha: float = 0.5,
                quantize: bool = True, migrate: bool = True) -> list[MethodResult]:
  """One s shared by every layer in `weights_IxO` (they all read the input `stats` describe);
  each weight becomes diag(s)·w quantized int8 per output channel (`quantize=False`: only
  smoothed).  Each result's `weight_IxO` is what the layer computes with, diag(1/s)·deq.
  `migrate=False` keeps s = 1: plain W8A8 round-to-nearest, the paper's baseline."""
  weights_IxO = [np.asarray(w, np.float32) for w in weights_IxO]
  _check(stats, weights_IxO, alpha)
  s = smooth_scales(stats.abs_max_I, weights_IxO, alpha) if migrate else \
      np.ones(stats.abs_max_I.shape, np.float32)
  out = []
  for w in weights_IxO:
    scaled = s[:, None] * w
    grid = int8_per_channel(scaled) if quantize else None
    stored = grid.dequantize() if grid is not None else scaled
    out.append(MethodResult(weight_IxO=(stored / s[:, None]).astype(np.float32), grid=grid,
                            input_scale_I=s))
  return out


def apply(w_IxO: np.ndarray, stats: LayerStats, alpha: float = 0.5,
          quantize: bool = True, migrate: bool = True) -> MethodResult:
  """SmoothQuant of one layer (see `apply_joint` for layers sharing an input)."""
  return apply_joint([w_IxO], stats, alpha=alpha, quantize=quantize, migrate=migrate)[0]


METHODS["smoothquant"] = apply
