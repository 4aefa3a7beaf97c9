"""Saving a checkpoint of a replicated state on a multi-device mesh compiles no XLA programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reparam_jax.rundir import checkpoint

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_saving_small_replicated_arrays_compiles_nothing(tmp_path):
  """Orbax's replica-parallel write slices each replicated array on device, one compile
  per distinct slice; the trainer's tiny-array checkpoints must not pay that."""
  assert jax.device_count() == 8  # tests/conftest.py
  replicated = NamedSharding(jax.make_mesh((8,), ("data",)), P())
  state = jax.device_put({"w": jnp.ones((64, 32)), "b": jnp.arange(32.0), "step": jnp.int32(3)},
                         replicated)
  jax.block_until_ready(state)
  compiles = []

  def listen(event, duration, **kwargs):
    if event == BACKEND_COMPILE:
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    saver = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
    saver.save(3, state, None, force=True)
    saver.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  reader = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
  restored = reader.restore(3, abstract, None)
  reader.close()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, state)
