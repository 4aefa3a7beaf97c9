"""SparseGPT and Wanda (methods/sparsegpt.py, wanda.py) against straightforward NumPy
transcriptions of the papers' algorithms, in torch's [d_out, d_in] layout."""

import numpy as np
import pytest

from reparam_jax.compression.methods import sparsegpt, wanda
from reparam_jax.errors import UserError
from tests.compression.test_gptq import correlated_inputs, stats_of


def reference_sparsegpt(w_IxO, h_IxI, p, n, m, damp=0.01, blocksize=128):
  """SparseGPT's Algorithm 1 without lazy batches: the mask of each block of `blocksize`
  columns (unstructured) or of each m columns (n:m) by the OBS saliency w² / [H⁻¹]_jj²
  of the current weights, then each column's error spread over every later column."""
  W = w_IxO.T.astype(np.float64).copy()
  H = h_IxI.astype(np.float64).copy()
  d_out, d_in = W.shape
  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  H[np.diag_indices(d_in)] += damp * np.mean(np.diag(H))
  U = np.linalg.cholesky(np.linalg.inv(H)).T
  pruned = np.zeros(W.shape, bool)
  for j in range(d_in):
    if not m and j % blocksize == 0:
      cols = slice(j, min(j + blocksize, d_in))
      saliency = W[:, cols] ** 2 / np.diag(U)[cols] ** 2
      k = int(saliency.size * p)
      lowest = np.argsort(saliency.T, axis=None, kind="stable")[:k]  # the [I, O] order
      block = np.zeros(saliency.T.shape, bool)
      block.flat[lowest] = True
      pruned[:, cols] = block.T
    if m and j % m == 0:
      saliency = W[:, j:j + m] ** 2 / np.diag(U)[j:j + m] ** 2
      for o in range(d_out):
        pruned[o, j + np.argsort(saliency[o], kind="stable")[:n]] = True
    q = np.where(pruned[:, j], 0.0, W[:, j])
    err = (W[:, j] - q) / U[j, j]
    W[:, j:] -= np.outer(err, U[j, j:])
    W[:, j] = q
  return ~pruned.T, W.T


def reference_wanda(w_IxO, x_NxI, p, n, m):
  W = w_IxO.T
  score = np.abs(W) * np.linalg.norm(x_NxI.astype(np.float64), axis=0)
  keep = np.ones(W.shape, bool)
  for o in range(W.shape[0]):  # the comparison group: one output row
    if m:
      for j in range(0, W.shape[1], m):
        keep[o, j + np.argsort(score[o, j:j + m], kind="stable")[:n]] = False
    else:
      keep[o, np.argsort(score[o], kind="stable")[:int(W.shape[1] * p)]] = False
  return keep.T


def magnitude(w, p, n, m):
  if m:
    groups = np.abs(w).reshape(-1, m, w.shape[1])
    keep = np.ones(groups.shape, bool)
    np.put_along_axis(keep, np.argsort(groups, axis=1)[:, :n], False, axis=1)
    return np.where(keep.reshape(w.shape), w, 0)
  k = int(w.size * p)
  return np.where(np.abs(w) > np.sort(np.abs(w), axis=None)[k - 1], w, 0)


CASES = [(0.5, 0, 0), (0.5, 2, 4), (0.5, 4, 8), (0.7, 0, 0)]


def sparsity_arg(p, n, m):
  return f"{n}:{m}" if m else p


@pytest.mark.parametrize("p,n,m", CASES)
def test_sparsegpt_matches_the_papers_algorithm(p, n, m):
  d_in, d_out = 256, 40
  x = correlated_inputs(1024, d_in)
  w = np.random.default_rng(1).normal(size=(d_in, d_out)).astype(np.float32)
  stats = stats_of(x)
  result = sparsegpt.apply(w, stats, sparsegpt_arg := sparsity_arg(p, n, m))
  keep, weight = reference_sparsegpt(w, stats.hessian_IxI, p, n, m)
  assert (result.mask_IxO == keep).mean() > 0.995, sparsegpt_arg
  same = (result.mask_IxO == keep).all(axis=0)  # output columns whose whole mask agrees
  np.testing.assert_allclose(result.weight_IxO[:, same], weight[:, same], rtol=2e-3, atol=2e-3)
  assert np.all(result.weight_IxO[~result.mask_IxO] == 0)
  assert abs((~result.mask_IxO).mean() - p) < 0.01
  if m:  # exactly n zeros in every m consecutive inputs of each output
    assert np.all((~result.mask_IxO).reshape(-1, m, d_out).sum(1) == n)


@pytest.mark.parametrize("p,n,m", CASES)
def test_sparsegpt_output_error_is_below_magnitude(p, n, m):
  d_in, d_out = 256, 64
  x = correlated_inputs(2048, d_in, seed=3)
  w = np.random.default_rng(4).normal(size=(d_in, d_out)).astype(np.float32)
  result = sparsegpt.apply(w, stats_of(x), sparsity_arg(p, n, m))
  err = np.linalg.norm(x @ w - x @ result.weight_IxO)
  err_magnitude = np.linalg.norm(x @ w - x @ magnitude(w, p, n, m))
  assert err < 0.8 * err_magnitude, (err, err_magnitude)


@pytest.mark.parametrize("p,n,m", CASES)
def test_wanda_matches_the_papers_score(p, n, m):
  d_in, d_out = 128, 24
  x = correlated_inputs(512, d_in, seed=5)
  w = np.random.default_rng(6).normal(size=(d_in, d_out)).astype(np.float32)
  result = wanda.apply(w, stats_of(x), sparsity_arg(p, n, m))
  keep = reference_wanda(w, x, p, n, m)
  assert (result.mask_IxO == keep).mean() > 0.995
  np.testing.assert_array_equal(result.weight_IxO, np.where(result.mask_IxO, w, 0))
  err = np.linalg.norm(x @ w - x @ result.weight_IxO)
  assert err < np.linalg.norm(x @ w - x @ magnitude(w, p, n, m))


def test_bad_sparsity_is_a_one_line_error():
  x = correlated_inputs(64, 32)
  w = np.ones((32, 8), np.float32)
  for bad in ("3:2", "a:b", 1.5):
    with pytest.raises(UserError, match="sparsity"):
      sparsegpt.apply(w, stats_of(x), bad)
  with pytest.raises(UserError, match="divisible"):
    wanda.apply(w[:30], stats_of(x[:, :30]), "4:8")


def test_wanda_compared_per_layer_ranks_the_whole_layers_scores():
  """compare='layer' (the paper's comparison-group ablation): the lowest p·d_in·d_out
  scores of the layer go, so columns lose different counts; per output they lose the same."""
  d_in, d_out = 64, 16
  x = correlated_inputs(256, d_in, seed=7)
  w = np.random.default_rng(8).normal(size=(d_in, d_out)).astype(np.float32)
  w[:, 0] *= 10  # one output column of large weights keeps more of its entries per layer
  score = np.abs(w) * np.linalg.norm(x.astype(np.float64), axis=0)[:, None]
  result = wanda.apply(w, stats_of(x), 0.5, compare="layer")
  np.testing.assert_array_equal(result.mask_IxO, score > np.median(score))
  per_column = result.mask_IxO.sum(axis=0)
  assert per_column[0] > per_column[1:].max()
  assert (wanda.apply(w, stats_of(x), 0.5).mask_IxO.sum(axis=0) == d_in // 2).all()
  with pytest.raises(UserError, match="N:M groups are per output"):
    wanda.apply(w, stats_of(x), "2:4", compare="layer")
