"""L1 on a toy sparse regression: small weights go (near) zero; the threshold sweep counts them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.regularizers import Regularizer
from reparam_jax.regularizers.threshold import format_rows, threshold_counts

D_IN, D_OUT, N, TRUE_NONZERO = 64, 4, 512, 16


def _data():
  rng = np.random.default_rng(0)
  w_true = np.zeros((D_IN, D_OUT), np.float32)
  rows = rng.choice(D_IN, TRUE_NONZERO // D_OUT * 2, replace=False)
  for i, r in enumerate(rows[:TRUE_NONZERO]):
    w_true[r, i % D_OUT] = rng.choice([-1.0, 1.0]) * (0.5 + rng.random())
  x = rng.normal(size=(N, D_IN)).astype(np.float32)
  y = x @ w_true + 0.2 * rng.normal(size=(N, D_OUT)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y), w_true


def _train(l1: float, steps: int = 1500):
  """Adam (cosine lr to ~0) on ½·MSE + l1·Σ|W|, through the config's rules."""
  x, y, w_true = _data()
  cfg = base_config().reg
  cfg.rules = ((r"dense/kernel", f"l1({l1})"),)
  reg = Regularizer(cfg)
  params = {"dense": {"kernel": jnp.asarray(
      np.random.default_rng(1).normal(size=(D_IN, D_OUT)).astype(np.float32) * 0.1)}}
  tx = optax.adam(optax.cosine_decay_schedule(3e-2, steps, alpha=1e-4))

  def loss(p):
    err = x @ p["dense"]["kernel"] - y
    return 0.5 * jnp.mean(jnp.sum(err * err, -1)) + reg.penalty(p)[0]

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, w_true


@pytest.fixture(scope="module")
def trained():
  return {l1: _train(l1) for l1 in (0.0, 3e-2)}


def test_l1_drives_the_off_support_weights_towards_zero(trained):
  (p0, w_true), (p1, _) = trained[0.0], trained[3e-2]
  w0, w1 = np.asarray(p0["dense"]["kernel"]), np.asarray(p1["dense"]["kernel"])
  off = w_true == 0
  small0 = np.mean(np.abs(w0[off]) < 1e-3)
  small1 = np.mean(np.abs(w1[off]) < 1e-3)
  # Plain subgradient + Adam: near zero, not exactly zero, but far more of them than without L1.
  assert small1 > 0.9, small1
  assert small0 < 0.3, small0
  # The true support survives (L1 shrinks it by about coef, not to zero).
  assert np.all(np.abs(w1[~off]) > 0.3)


def test_threshold_sweep_counts_exactly_and_recovers_the_support(trained):
  (p1, w_true) = trained[3e-2]
  w1 = np.asarray(p1["dense"]["kernel"])
  thresholds = (0.0, 1e-4, 1e-3, 1e-2)
  rows = threshold_counts(p1, thresholds)
  by_t = {r["threshold"]: r for r in rows if r["path"] == "total"}
  for t in thresholds:
    assert by_t[t]["zeros"] == int(np.sum(np.abs(w1) <= t))
    assert by_t[t]["size"] == D_IN * D_OUT
  # Monotone in the threshold; at 1e-2 the mask keeps exactly the true support.
  zeros = [by_t[t]["zeros"] for t in thresholds]
  assert zeros == sorted(zeros)
  np.testing.assert_array_equal(np.abs(w1) > 1e-2, w_true != 0)
  assert by_t[1e-2]["zeros"] == int(np.sum(w_true == 0))
  text = format_rows(rows, per_layer=False)
  assert "total" in text and f"{by_t[1e-2]['zeros']:,}" in text
  # Without L1 the same threshold prunes true-zero weights far less often.
  w0 = np.asarray(trained[0.0][0]["dense"]["kernel"])
  assert np.sum(np.abs(w0) <= 1e-3) < 0.3 * np.sum(w_true == 0)
