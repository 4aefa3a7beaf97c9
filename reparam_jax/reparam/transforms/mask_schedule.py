"""When masks change and to what sparsity: Zhu & Gupta's (2017) polynomial schedule.

  s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n Δt))³     for t = t0, t0 + Δt, …, t0 + n Δt

with t0 = `begin_step`, t0 + nΔt = `end_step`, Δt = `every`.  Before t0 nothing
is pruned; from `end_step` on the target is s_f.  `begin_step == end_step` is
one-shot pruning at that step.  All functions take a traced step, so the
schedule runs inside the jitted train step without recompiling.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def target_sparsity(stage: Any, step: jax.Array | int) -> jax.Array:
  """s_t of the cubic schedule (0 before `begin_step`)."""
  t = jnp.asarray(step, jnp.float32)
  t0, t1 = float(stage.begin_step), float(stage.end_step)
  s_i, s_f = float(stage.initial_sparsity), float(stage.sparsity)
  if t1 == t0:
    return jnp.where(t >= t0, s_f, 0.0)
  frac = jnp.clip((t - t0) / (t1 - t0), 0.0, 1.0)
  s = s_f + (s_i - s_f) * (1.0 - frac) ** 3
  return jnp.where(t >= t0, s, 0.0)


def is_update_step(stage: Any, step: jax.Array | int) -> jax.Array:
  """True at t0, t0 + Δt, …, and at `end_step`; movement scores keep updating after it."""
  t = jnp.asarray(step, jnp.int32)
  t0, t1 = stage.begin_step, stage.end_step
  on_grid = ((t - t0) % stage.every == 0) | (t == t1)
  if stage.method in ("movement", "soft_movement"):
    return (t >= t0) & on_grid
  return (t >= t0) & (t <= t1) & on_grid
