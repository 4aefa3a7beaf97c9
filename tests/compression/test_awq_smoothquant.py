"""AWQ and SmoothQuant on random layers, against NumPy versions of the papers' algorithms
written here (the reference implementations' loops, not the library's vectorized code)."""

import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.compression.methods import METHODS, LayerStats, rtn
from reparam_jax.compression.methods import awq, smoothquant
from reparam_jax.errors import UserError
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms.smooth import scaled_theta


def _stats(x_NxI, keep=None):
  x = np.asarray(x_NxI, np.float64)
  return LayerStats(hessian_IxI=x.T @ x, count=len(x), abs_max_I=np.abs(x).max(0),
                    abs_mean_I=np.abs(x).mean(0),
                    samples_MxI=np.asarray(x_NxI[:keep], np.float32))


def _outlier_inputs(rng, n, d_in, channels=(3, 17, 40), factor=30.0):
  """Activations with a few input channels far larger than the rest (the papers' setting)."""
  x = rng.normal(size=(n, d_in)).astype(np.float32)
  x[:, list(channels)] *= factor
  return x


# --- the papers' algorithms, written out ---------------------------------------------

def ref_group_rtn(w_IxO, bits, group):
  """Asymmetric min–max round-to-nearest per (group of input rows, output column), with
  0 inside the range (the GPTQ/AWQ grids), loop by loop."""
  out = np.empty_like(w_IxO)
  top = 2 ** bits - 1
  for start in range(0, w_IxO.shape[0], group):
    for j in range(w_IxO.shape[1]):
      col = w_IxO[start:start + group, j]
      lo, hi = min(col.min(), 0.0), max(col.max(), 0.0)
      scale = np.float32((hi - lo) / top) if hi > lo else np.float32(1.0)
      zero = np.round(-lo / scale)
      q = np.clip(np.round(col / scale) + zero, 0, top)
      out[start:start + group, j] = (q - zero) * scale
  return out


def ref_awq_scale(ws, x, bits, group, n_grid=20):
  """llm-awq's `auto_scale` search: s = mean|x|^α / sqrt(max·min), α = k / n_grid, the
  output MSE of (x / s) @ Q(s·w) against x @ w over all layers `ws` sharing x."""
  x_mean = np.abs(x.astype(np.float64)).mean(0)
  losses, scales = [], []
  for k in range(n_grid):
    s = np.maximum(x_mean ** (k / n_grid), 1e-4)
    s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
    err, size = 0.0, 0
    for w in ws:
      q = ref_group_rtn(s[:, None] * w, bits, group) / s[:, None]
      err += np.sum((x @ q - x @ w).astype(np.float64) ** 2)
      size += x.shape[0] * w.shape[1]
    losses.append(err / size)
    scales.append(s)
  return scales, np.array(losses)


def ref_awq_clip(w, x, bits, group, n_grid=20, max_shrink=0.5):
  """llm-awq's `auto_clip_layer`: per (group, output column), the shrink of max|w| whose
  clamped, quantized group gives the smallest error of that group's output."""
  best = np.empty((w.shape[0] // group, w.shape[1]), np.float32)
  for g in range(w.shape[0] // group):
    rows = slice(g * group, (g + 1) * group)
    for j in range(w.shape[1]):
      col, xg = w[rows, j:j + 1], x[:, rows]
      errs = []
      for i in range(int(max_shrink * n_grid)):
        m = np.abs(col).max() * (1 - i / n_grid)
        q = ref_group_rtn(np.clip(col, -m, m), bits, group)
        errs.append((np.mean(((xg @ q - xg @ col).astype(np.float64)) ** 2), m))
      best[g, j] = min(errs, key=lambda e: e[0])[1]
  return best


def ref_smoothquant(x, ws, alpha):
  """s_j = max|X_j|^α / max|W_j|^(1−α), W_j the weights input channel j meets (all layers)."""
  w_max = np.max([np.abs(w).max(1) for w in ws], axis=0)
  return np.abs(x).max(0) ** alpha / w_max ** (1 - alpha)


def ref_int8_columns(w):
  step = np.abs(w).max(0) / 127
  return np.round(w / step), step


# --- AWQ -------------------------------------------------------------------------------

def _assert_same_or_tied(chosen_loss, losses):
  assert chosen_loss <= losses.min() * (1 + 1e-5), (chosen_loss, losses.min())


@pytest.mark.parametrize("clip", [False, True])
def test_awq_matches_the_reference_search(clip):
  rng = np.random.default_rng(0)
  x = _outlier_inputs(rng, 128, 64)
  w = rng.normal(size=(64, 24)).astype(np.float32)
  res = METHODS["awq"](w, _stats(x), bits=3, group=16, clip=clip)
  scales, losses = ref_awq_scale([w], x, bits=3, group=16)
  best = int(np.argmin(losses))
  k = min(range(20), key=lambda i: np.abs(scales[i] - res.input_scale_I).max())
  np.testing.assert_allclose(res.input_scale_I, scales[k], rtol=1e-6)
  _assert_same_or_tied(losses[k], losses)
  assert k == best  # no tie on this draw: the same α
  scaled = scales[best][:, None] * w
  if clip:
    m = ref_awq_clip(scaled, x / scales[best], bits=3, group=16)
    scaled = np.clip(scaled, -np.repeat(m, 16, 0), np.repeat(m, 16, 0))
  expect = ref_group_rtn(scaled, 3, 16)
  # The same quantized weights (grid of s·w), up to a rounding tie at most.
  assert np.mean(np.abs(res.grid.dequantize() - expect) > 1e-5) < 1e-3
  np.testing.assert_allclose(res.weight_IxO, res.grid.dequantize() / res.input_scale_I[:, None],
                             rtol=1e-6)
  assert res.grid.bits == 3 and res.grid.group == 16 and res.grid.codes.max() <= 7


def test_awq_joint_scale_is_searched_on_all_layers_sharing_the_input():
  rng = np.random.default_rng(1)
  x = _outlier_inputs(rng, 96, 32, channels=(1, 7))
  ws = [rng.normal(size=(32, d)).astype(np.float32) * f for d, f in ((8, 1.0), (16, 3.0))]
  results = awq.apply_joint(ws, _stats(x), bits=4, group=8, clip=False)
  scales, losses = ref_awq_scale(ws, x, bits=4, group=8)
  np.testing.assert_allclose(results[0].input_scale_I, scales[int(np.argmin(losses))], rtol=1e-6)
  assert results[1].input_scale_I is results[0].input_scale_I  # one s for both layers
  for w, r in zip(ws, results):
    expect = ref_group_rtn(r.input_scale_I[:, None] * w, 4, 8)
    assert np.mean(np.abs(r.grid.dequantize() - expect) > 1e-5) < 1e-3


def test_awq_beats_rtn_on_salient_channels():
  """The paper's setting: a few input channels with large activations.  On fresh inputs
  from the same distribution, AWQ's output error is well below RTN's."""
  rng = np.random.default_rng(2)
  w = rng.normal(size=(128, 64)).astype(np.float32)
  calib, test = _outlier_inputs(rng, 256, 128), _outlier_inputs(rng, 256, 128)
  err = lambda w_eff: float(np.mean((test @ w_eff - test @ w) ** 2))  # noqa: E731
  for bits in (3, 4):
    rtn_err = err(rtn(w, bits, 32).dequantize())
    awq_scale_only = err(awq.apply(w, _stats(calib), bits=bits, group=32, clip=False).weight_IxO)
    awq_err = err(awq.apply(w, _stats(calib), bits=bits, group=32).weight_IxO)
    assert awq_scale_only < 0.7 * rtn_err, (bits, awq_scale_only, rtn_err)
    assert awq_err <= awq_scale_only * 1.05, (bits, awq_err, awq_scale_only)


def test_awq_then_gptq_rounds_the_scaled_weight_on_the_scaled_inputs():
  """quantizer='gptq': GPTQ of diag(s)·w on the Hessian of x / s (formed here from x / s).
  With correlated inputs (what GPTQ exploits) and salient channels, the chain beats both
  GPTQ alone and AWQ with RTN on fresh inputs."""
  from reparam_jax.compression.methods import gptq
  rng = np.random.default_rng(7)
  w = rng.normal(size=(128, 64)).astype(np.float32)
  mix = np.eye(128, dtype=np.float32) + 0.3 * rng.normal(size=(128, 128)).astype(np.float32)

  def draw(n):
    x = rng.normal(size=(n, 128)).astype(np.float32) @ mix
    x[:, [3, 17, 40]] *= 30
    return x

  calib, test = draw(1024), draw(256)
  res = awq.apply(w, _stats(calib), bits=3, group=32, quantizer="gptq")
  s = res.input_scale_I
  direct = gptq.apply(s[:, None] * w, _stats(calib / s), bits=3, group=32)
  np.testing.assert_array_equal(res.grid.codes, direct.grid.codes)
  np.testing.assert_allclose(res.weight_IxO, direct.weight_IxO / s[:, None], rtol=1e-5, atol=1e-6)
  err = lambda w_eff: float(np.mean((test @ w_eff - test @ w) ** 2))  # noqa: E731
  awq_rtn = err(awq.apply(w, _stats(calib), bits=3, group=32).weight_IxO)
  gptq_alone = err(gptq.apply(w, _stats(calib), bits=3, group=32).weight_IxO)
  assert err(res.weight_IxO) < 0.7 * min(awq_rtn, gptq_alone), (err(res.weight_IxO), awq_rtn,
                                                                  gptq_alone)


def test_awq_refuses_what_it_cannot_do():
  rng = np.random.default_rng(3)
  x, w = rng.normal(size=(16, 32)).astype(np.float32), np.ones((32, 4), np.float32)
  with pytest.raises(UserError, match="no input samples"):
    awq.apply(w, _stats(x, keep=0), group=8)
  with pytest.raises(UserError, match="does not divide"):
    awq.apply(w, _stats(x), group=12)
  with pytest.raises(UserError, match="does not read the calibrated input"):
    awq.apply(np.ones((16, 4), np.float32), _stats(x), group=8)
  with pytest.raises(UserError, match="quantizer='gptq' leave clip unset"):
    awq.apply(w, _stats(x), group=8, quantizer="gptq", clip=True)
  with pytest.raises(UserError, match="use 'rtn' or 'gptq'"):
    awq.apply(w, _stats(x), group=8, quantizer="nf4")


# --- SmoothQuant -------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_matches_the_paper(alpha):
  rng = np.random.default_rng(4)
  x = _outlier_inputs(rng, 64, 48)
  ws = [rng.normal(size=(48, d)).astype(np.float32) for d in (16, 8)]
  results = smoothquant.apply_joint(ws, _stats(x), alpha=alpha)
  s = ref_smoothquant(x, ws, alpha)
  np.testing.assert_allclose(results[0].input_scale_I, s, rtol=1e-5)
  np.testing.assert_allclose(METHODS["smoothquant"](ws[0], _stats(x), alpha=alpha).input_scale_I,
                             ref_smoothquant(x, ws[:1], alpha), rtol=1e-5)
  for w, r in zip(ws, results):
    q, step = ref_int8_columns(s[:, None].astype(np.float32) * w)
    codes = r.grid.codes.astype(np.int32) - 128
    assert np.mean(codes != q) < 1e-3  # the same int8 weights up to rounding ties
    np.testing.assert_allclose(r.grid.scales[0], step, rtol=1e-5)
    np.testing.assert_allclose(r.weight_IxO, r.grid.dequantize() / r.input_scale_I[:, None],
                               rtol=1e-6)


def test_smoothquant_w8a8_beats_plain_w8a8_on_outlier_channels():
  """Run time through the stage: `quant(bits=8, act_bits=8)|smooth` holding SmoothQuant's
  s (x / s int8 per token, diag(s)·w int8 per column) against plain W8A8."""
  rng = np.random.default_rng(5)
  d_in = 64
  w = rng.normal(size=(d_in, 32)).astype(np.float32) * 0.05
  calib, test = (_outlier_inputs(rng, 128, d_in, factor=60.0) for _ in range(2))
  ref = test @ w
  plain = parse_spec("quant(bits=8, act_bits=8)")
  y_plain = plain.apply(plain.from_dense(jnp.asarray(w))).left_matmul(jnp.asarray(test))
  res = smoothquant.apply(w, _stats(calib))
  node = parse_spec("quant(bits=8, act_bits=8)|smooth")
  kernel = node.apply(scaled_theta(node, res.weight_IxO, res.input_scale_I))
  y_smooth = kernel.left_matmul(jnp.asarray(test))
  # The stage computes with the method's weight (int8 of diag(s)·w, scaled back by 1/s).
  np.testing.assert_allclose(np.asarray(kernel.dense()), res.weight_IxO, rtol=1e-4, atol=1e-7)
  err_plain = float(np.mean((np.asarray(y_plain) - ref) ** 2))
  err_smooth = float(np.mean((np.asarray(y_smooth) - ref) ** 2))
  assert err_smooth < 0.3 * err_plain, (err_smooth, err_plain)


def test_smoothquant_refuses_bad_alpha_and_shapes():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(8, 16)).astype(np.float32)
  with pytest.raises(UserError, match="alpha=1.5"):
    smoothquant.apply(np.ones((16, 4), np.float32), _stats(x), alpha=1.5)
  with pytest.raises(UserError, match="does not read the calibrated input"):
    smoothquant.apply(np.ones((8, 4), np.float32), _stats(x))
