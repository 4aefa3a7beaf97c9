"""perf/rng.py: the straight-line threefry lowering on CPU draws the same bits, without a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax import train
from reparam_jax.perf import rng
from tests.helpers import tiny_args


def _draw(key):
  return jax.random.normal(key, (64, 33)), jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3,
                                                                 (17,))


def test_unrolled_threefry_draws_the_same_numbers_without_a_while_loop():
  key = jax.random.key(3)
  try:
    assert rng.use_unrolled_threefry_on_cpu(False)
    # A new function for each lowering: JAX caches lowerings per function.
    rolled_hlo = jax.jit(lambda k: _draw(k)).lower(key).compile().as_text()
    rolled = jax.jit(lambda k: _draw(k))(key)
    assert rng.use_unrolled_threefry_on_cpu(True)
    unrolled_hlo = jax.jit(lambda k: _draw(k)).lower(key).compile().as_text()
    unrolled = jax.jit(lambda k: _draw(k))(key)
  finally:
    rng.use_unrolled_threefry_on_cpu(False)  # JAX's, and the trainer's under the suite (below)
  for a, b in zip(rolled, unrolled):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # JAX's CPU default hashes in a rolled `while`; the straight-line lowering has none.
  assert " while(" in rolled_hlo
  assert " while(" not in unrolled_hlo
  assert jnp.isfinite(unrolled[0]).all()


def _hlo_of_a_draw() -> str:
  return jax.jit(lambda k: _draw(k)).lower(jax.random.key(0)).compile().as_text()


@pytest.fixture
def most_optimizations(request):
  """jax_disable_most_optimizations set as the test says, then the suite's value back."""
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", request.param)
  yield request.param
  jax.config.update("jax_disable_most_optimizations", before)
  rng.use_unrolled_threefry_on_cpu(False)


@pytest.mark.parametrize("most_optimizations", [True, False], indirect=True,
                         ids=["optimizations_off", "xla_defaults"])
def test_the_trainer_unrolls_only_where_xla_optimises(most_optimizations, tmp_path,
                                                      raw_data_dir, tfds_dir):
  """Where most of XLA's optimisations are off (JAX_DISABLE_MOST_OPTIMIZATIONS=1, the suite's
  setting), compiles are meant to be short: the trainer keeps JAX's rolled loop whatever
  config.perf.cpu_unrolled_threefry says; with XLA's defaults it unrolls as configured."""
  assert rng.unrolled_wanted(True) is not most_optimizations
  assert rng.unrolled_wanted(False) is False
  # The opposite lowering registered before the run: the trainer's choice is what switches it.
  rng.use_unrolled_threefry_on_cpu(most_optimizations)
  train.main(tiny_args(str(tmp_path / "run"), raw_data_dir, tfds_dir, num_steps="1",
                       eval_every="1", checkpoint_every="1"))
  assert (" while(" in _hlo_of_a_draw()) is most_optimizations
