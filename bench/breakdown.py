"""Where a train step's time goes: forward, backward, and everything after.

Three jitted programs over the same params, shardings and batches, timed
interleaved in one process:

  forward            the trainer's loss (`steps.make_loss_fn`), value only
  forward+backward   its `value_and_grad` (the gradients are outputs, so XLA
                     cannot drop the backward pass)
  train step         the trainer's whole step (`StepRunner.run`)

backward = (forward+backward) − forward; "optimizer and rest" = step −
(forward+backward): the gradient all-reduce across devices, clipping,
AdamW, the finiteness guard and the new state.  Differences of medians, so
a small share can come out slightly negative on a noisy machine.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench import speed, timing
from bench.lm_step import StepRunner
from bench.suites import Suite
from reparam_jax.training import steps


def _phase_runners(r: StepRunner) -> dict[str, Any]:
  loss_fn = steps.make_loss_fn(r.model, r.task, r.reparam)
  # The step donates its state: the other programs keep their own copy.
  params, extra = jax.tree.map(jnp.copy, (r.state.params, r.state.extra))
  rng, step = jax.random.key(r.config.seed), jnp.zeros((), jnp.int32)
  shardings = (r.state_shardings.params, r.state_shardings.extra)

  def forward(p, e, batch):
    return loss_fn(p, e, batch, rng, step)[0]

  def forward_backward(p, e, batch):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, e, batch, rng, step)
    return loss, grads

  with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
    fwd = jax.jit(forward, in_shardings=(*shardings, None))
    fwd_bwd = jax.jit(forward_backward, in_shardings=(*shardings, None),
                      out_shardings=(None, shardings[0]))

  def call(fn):
    def run(i: int) -> None:
      with jax.set_mesh(r.mesh), nn.logical_axis_rules(r.rules):
        jax.block_until_ready(fn(params, extra, r.batches[i % len(r.batches)]))
    return run

  return {"forward": call(fwd), "forward+backward": call(fwd_bwd), "train step": r.run}


def step_breakdown(r: StepRunner, suite: Suite,
                   variants: dict[str, Callable[[int], Any]] | None = None
                   ) -> list[dict[str, Any]]:
  """Rows {phase, wall_ms, cpu_ms, share}: the measured programs and their differences.

  `variants` ({name: run(i)}, e.g. another runner's step) are timed in the same
  rounds and listed as rows of their own.
  """
  runs = {**_phase_runners(r), **(variants or {})}
  t = timing.interleaved(runs, speed.rounds(runs, suite), suite.warmup)
  fwd, both, step = (t[k]["wall_ms"] for k in ("forward", "forward+backward", "train step"))
  rows = [dict(phase=k, **v) for k, v in t.items()]
  rows += [dict(phase="backward = (forward+backward) − forward", wall_ms=both - fwd),
           dict(phase="optimizer and rest = step − (forward+backward)", wall_ms=step - both)]
  for row in rows:
    row["share"] = row["wall_ms"] / step
  return rows
