"""GPTQ (methods/gptq.py) against a straightforward NumPy transcription of the paper's
Algorithm 1 without lazy batching, in torch's [d_out, d_in] layout: column by column,
each column's error spread over every later column with the row of the Cholesky factor
of H⁻¹."""

import numpy as np
import pytest

from reparam_jax.compression.methods import LayerStats, rtn
from reparam_jax.compression.methods import gptq
from reparam_jax.errors import UserError


def correlated_inputs(n, d_in, seed=0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in) + np.eye(d_in)
  scale = np.exp(rng.normal(size=d_in))  # features of different magnitudes
  return (rng.normal(size=(n, d_in)) @ mix * scale).astype(np.float32)


def stats_of(x_NxI):
  x = x_NxI.astype(np.float64)
  return LayerStats(x.T @ x, len(x), np.abs(x).max(0), np.abs(x).mean(0), x[:0])


def reference_gptq(w_IxO, h_IxI, bits, group, sym, damp=0.01, act_order=False):
  """The paper's Algorithm 1 (no lazy batches) on W = w_IxO.T, [d_out, d_in]."""
  W = w_IxO.T.astype(np.float64).copy()
  H = h_IxI.astype(np.float64).copy()
  d_out, d_in = W.shape
  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  top = 2 ** bits - 1

  def params(cols):  # [d_out, g] → scale, zero per output
    if sym:
      scale = 2 * np.abs(cols).max(1) / top
      zero = np.full(d_out, (top + 1) / 2)
    else:
      lo, hi = np.minimum(cols.min(1), 0), np.maximum(cols.max(1), 0)
      scale = (hi - lo) / top
      zero = np.round(-lo / np.where(scale > 0, scale, 1))
    return np.where(scale > 0, scale, 1.0), zero

  g = group or d_in
  static = act_order or not group
  grids = [params(W[:, k * g:(k + 1) * g]) for k in range(d_in // g)] if static else None
  perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(d_in)
  W, H = W[:, perm], H[np.ix_(perm, perm)]
  H[np.diag_indices(d_in)] += damp * np.mean(np.diag(H))
  U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: Uᵀ U = H⁻¹
  codes = np.zeros((d_out, d_in), np.int64)
  Q = np.zeros_like(W)
  for j in range(d_in):
    if not static and j % g == 0:
      scale, zero = params(W[:, j:j + g])
    elif static:
      scale, zero = grids[perm[j] // g]
    c = np.clip(np.round(W[:, j] / scale) + zero, 0, top)
    codes[:, perm[j]] = c
    Q[:, j] = (c - zero) * scale
    err = (W[:, j] - Q[:, j]) / U[j, j]
    W[:, j:] -= np.outer(err, U[j, j:])
  out = np.empty_like(Q)
  out[:, perm] = Q
  return codes.T, out.T


@pytest.mark.parametrize("bits,group,sym,act_order", [
    (4, 64, False, False), (3, 64, True, False), (2, 0, False, False), (8, 64, False, False),
    (4, 64, False, True), (4, 256, True, True)])
def test_gptq_matches_the_papers_algorithm(bits, group, sym, act_order):
  d_in, d_out = 256, 40
  x = correlated_inputs(1024, d_in)
  x[:, 7] = 0.0  # a dead input
  w = np.random.default_rng(1).normal(size=(d_in, d_out)).astype(np.float32)
  stats = stats_of(x)
  result = gptq.apply(w, stats, bits=bits, group=group, sym=sym, act_order=act_order)
  codes, weight = reference_gptq(w, stats.hessian_IxI, bits, group, sym, act_order=act_order)
  same = result.grid.codes == codes
  assert same.mean() > 0.995, same.mean()  # float32 against float64: a few ties differ
  np.testing.assert_allclose(result.weight_IxO[same], weight[same], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.grid.dequantize(), result.weight_IxO, rtol=1e-5, atol=1e-6)
  assert np.all(result.weight_IxO[7] == 0)  # the dead input's row is zeroed
  assert result.grid.codes.max() <= 2 ** bits - 1


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_output_error_is_below_round_to_nearest(bits):
  d_in, d_out = 256, 64
  x = correlated_inputs(2048, d_in, seed=3)
  w = np.random.default_rng(4).normal(size=(d_in, d_out)).astype(np.float32)
  result = gptq.apply(w, stats_of(x), bits=bits, group=64)
  rtn_w = rtn(w, bits, 64).dequantize()
  err_gptq = np.linalg.norm(x @ w - x @ result.weight_IxO)
  err_rtn = np.linalg.norm(x @ w - x @ rtn_w)
  assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)


def test_gptq_bad_options_are_one_line_errors():
  x = correlated_inputs(64, 32)
  w = np.zeros((32, 8), np.float32)
  with pytest.raises(UserError, match="bits=5"):
    gptq.apply(w, stats_of(x), bits=5)
  with pytest.raises(UserError, match="group=24"):
    gptq.apply(w, stats_of(x), group=24)


@pytest.mark.parametrize("bits, group", [(4, 32), (3, 0)])
def test_gptq_of_low_rank_factors(bits, group):
  """apply_factors: both grids in lowrank's stored layout, and the product's output error
  below round-to-nearest of each factor and below GPTQ of each factor on its own (no
  refit of V to the rounded U)."""
  d_in, d_out, rank = 64, 96, 16
  x = correlated_inputs(2048, d_in, seed=1)
  rng = np.random.default_rng(2)
  u = rng.normal(size=(d_in, rank)).astype(np.float32) / 8
  v = rng.normal(size=(d_out, rank)).astype(np.float32) / 4
  stats = stats_of(x)
  grid_u, grid_v = gptq.apply_factors(u, v, stats, bits=bits, group=group, sym=False)
  assert grid_u.codes.shape == (d_in, rank) and grid_v.codes.shape == (d_out, rank)
  assert grid_v.group == group and grid_v.scales.shape[0] == (d_out // group if group else 1)
  assert grid_u.codes.max() < 2 ** bits and grid_v.codes.max() < 2 ** bits

  def out_err(u_hat, v_hat):
    return np.linalg.norm(x @ u @ v.T - x @ u_hat @ v_hat.T)

  ours = out_err(grid_u.dequantize(), grid_v.dequantize())
  rtn_err = out_err(rtn(u, bits, group).dequantize(), rtn(v, bits, group).dequantize())
  u_alone = gptq.apply(u, stats, bits=bits, group=group).weight_IxO
  v_alone = gptq.apply(v.T.copy(), stats_of(x @ u_alone), bits=bits, group=0).weight_IxO.T
  assert ours < 0.8 * rtn_err, (ours, rtn_err)
  assert ours < out_err(u_alone, v_alone), (ours, out_err(u_alone, v_alone))
