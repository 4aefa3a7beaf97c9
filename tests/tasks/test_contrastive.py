"""InfoNCE: lower for agreeing views, padding-safe, and trainable on dropout views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.objectives.contrastive import info_nce
from reparam_jax.tasks.encoder import two_views
from tests.tasks.encoder_helpers import VOCAB, init_params, tiny_encoder, train_few_steps


def test_info_nce_lower_when_views_agree():
  z = jax.random.normal(jax.random.key(0), (16, 8))
  noise = jax.random.normal(jax.random.key(1), (16, 8))
  agree, m_agree = info_nce(z, z + 0.05 * noise, temperature=0.1)
  unrelated, m_unrelated = info_nce(z, noise, temperature=0.1)
  assert float(agree) < 0.1 * float(unrelated)
  assert float(m_agree["contrastive_accuracy"]) == 1.0
  assert float(m_unrelated["contrastive_accuracy"]) < 0.5
  # A very high temperature flattens the logits: the loss tends to chance, log(B).
  flat, _ = info_nce(z, noise, temperature=1e4)
  assert float(flat) == pytest.approx(np.log(16), rel=1e-3)


def test_info_nce_ignores_padding_rows():
  z1 = jax.random.normal(jax.random.key(2), (6, 4))
  z2 = z1 + 0.1 * jax.random.normal(jax.random.key(3), (6, 4))
  w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
  padded, _ = info_nce(z1.at[4:].set(z2[0]), z2.at[4:].set(-3.0), 0.1, w)
  alone, _ = info_nce(z1[:4], z2[:4], 0.1)
  assert float(padded) == pytest.approx(float(alone), rel=1e-5)


def test_simcse_on_dropout_views_trains():
  model = tiny_encoder(dropout=0.1, pooling="mean")
  rng = np.random.default_rng(0)
  ids = rng.integers(7, VOCAB, size=(16, 12)).astype(np.int32)
  mask = np.ones((16, 12), bool)
  params = init_params(model, ids, mask)

  def loss_fn(p, key):
    apply_fn = lambda *a, train: model.apply({"params": p}, *a, train=train,  # noqa: E731
                                             rngs={"dropout": key})
    v1, v2 = two_views(apply_fn, [ids, mask], True)
    return info_nce(v1["sentence"], v2["sentence"], 0.05)[0]

  before, after = train_few_steps(loss_fn, params, steps=30)
  assert after < before


def test_two_views_differ_only_through_dropout():
  model = tiny_encoder(dropout=0.3)
  ids = np.tile(np.arange(7, 19, dtype=np.int32), (4, 1))
  mask = np.ones((4, 12), bool)
  params = init_params(model, ids, mask)

  def apply_fn(*a, train):
    return model.apply({"params": params}, *a, train=train, rngs={"dropout": jax.random.key(0)})

  v1, v2 = two_views(apply_fn, [ids, mask], True)
  assert v1["sentence"].shape == (4, 16)
  assert not np.allclose(v1["sentence"], v2["sentence"])
  e1, e2 = two_views(apply_fn, [ids, mask], False)
  np.testing.assert_allclose(e1["sentence"], e2["sentence"], rtol=1e-6)
