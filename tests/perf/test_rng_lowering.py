"""perf/rng.py: the straight-line threefry lowering on CPU draws the same bits, without a loop."""

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.perf import rng


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
    rng.use_unrolled_threefry_on_cpu(True)  # the trainer's default (config.perf)
  for a, b in zip(rolled, unrolled):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # JAX's CPU default hashes in a rolled `while`; the straight-line lowering has none.
  assert " while(" in rolled_hlo
  assert " while(" not in unrolled_hlo
  assert jnp.isfinite(unrolled[0]).all()
