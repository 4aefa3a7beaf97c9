"""Distillation losses: KD identities, hidden-state MSE, and a few training steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.objectives.classification import classification_loss
from reparam_jax.objectives.distillation import hidden_mse, kd_loss
from tests.tasks.encoder_helpers import VOCAB, init_params, tiny_encoder, train_few_steps


def test_kd_equals_task_loss_for_a_one_hot_teacher():
  student = jax.random.normal(jax.random.key(0), (6, 4))
  labels = jnp.array([0, 3, 1, 2, 2, 0])
  teacher = jax.nn.one_hot(labels, 4) * 1e4  # softmax = the one-hot targets
  ce, _ = classification_loss(student, labels)
  assert float(kd_loss(student, teacher, temperature=1.0)) == pytest.approx(float(ce), rel=1e-5)


def test_kd_is_zero_at_identical_logits_and_positive_otherwise():
  logits = jax.random.normal(jax.random.key(1), (5, 3)) * 3
  for t in (1.0, 2.0, 4.0):
    assert float(kd_loss(logits, logits, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, logits[::-1], t)) > 1e-3


def test_kd_scales_with_temperature_squared_and_ignores_padding_rows():
  s = jnp.array([[1.0, -1.0], [0.5, 0.0]])
  t = jnp.array([[-1.0, 2.0], [0.0, 0.0]])
  p_t = jax.nn.softmax(t[0] / 2.0)
  kl = float((p_t * (jnp.log(p_t) - jax.nn.log_softmax(s[0] / 2.0))).sum())
  assert float(kd_loss(s, t, 2.0, jnp.array([1.0, 0.0]))) == pytest.approx(4.0 * kl, rel=1e-5)


def test_hidden_mse_counts_real_tokens_only():
  a = jnp.zeros((1, 3, 2))
  b = jnp.array([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]]])
  assert float(hidden_mse(a, b, jnp.array([[True, True, False]]))) == pytest.approx(1.5)
  assert float(hidden_mse(b, b, jnp.ones((1, 3), bool))) == 0.0


def test_student_learns_from_teacher_logits():
  """A student trained on KD alone moves its distribution to the (fixed) teacher's."""
  student = tiny_encoder(embed_dim=8)
  rng = np.random.default_rng(0)
  ids = rng.integers(7, VOCAB, size=(16, 12)).astype(np.int32)
  mask = np.ones((16, 12), bool)
  teacher_logits = jnp.asarray(rng.normal(size=(16, 2)) * 2, jnp.float32)
  params = init_params(student, ids, mask)

  def loss_fn(p, key):
    out = student.apply({"params": p}, ids, mask, train=True, rngs={"dropout": key})
    return kd_loss(out["logits"], teacher_logits, 2.0)

  before, after = train_few_steps(loss_fn, params, steps=40)
  assert after < 0.5 * before
