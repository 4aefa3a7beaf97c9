"""The learning-rate schedules: linear warm-up, then cosine or linear decay."""

import numpy as np
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.errors import UserError
from reparam_jax.training import optim


def _opt(**kw):
  opt = base_config().optimizer
  for k, v in kw.items():
    opt[k] = v
  return opt


def test_linear_schedule_is_bert_s():
  s = optim.learning_rate_schedule(_opt(lr=1e-4, end_lr=0.0, warmup_steps=36,
                                        schedule="linear"), 600)
  np.testing.assert_allclose([float(s(t)) for t in (0, 18, 36, 318, 600)],
                             [0.0, 5e-5, 1e-4, 5e-5, 0.0], atol=1e-12)


def test_cosine_stays_the_default_and_unknown_is_an_error():
  s = optim.learning_rate_schedule(_opt(lr=1e-3, end_lr=1e-4, warmup_steps=100), 2000)
  mid = 100 + 950
  np.testing.assert_allclose(float(s(mid)), 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)
  with pytest.raises(UserError, match="optimizer.schedule='step'"):
    optim.learning_rate_schedule(_opt(schedule="step"), 10)
