"""Surviving preemption, divergence and full disks: the trainer's safety helpers.

* `PreemptionWatcher`: SIGTERM/SIGINT become a request to stop after the
  current step; in a multi-process run all processes agree on the step.
* `all_finite` / `keep_if`: inside the jitted step, a step with a non-finite
  loss, gradient or result leaves params and optimizer state untouched (no
  host round-trip).  `DivergenceMonitor` decides on the host, at the next
  sync point, whether that stops the run or is counted as a skipped step.
* `check_disk_space`: refuses to start when a checkpoint cannot fit.

See docs/reliability.md for what is guaranteed.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from reparam_jax.errors import TrainingDiverged, UserError

PyTree = Any

# Exit code when the checkpoint after a preemption signal did not finish within
# the grace period (128 + SIGTERM, what a scheduler's SIGKILL would look like).
EXIT_GRACE_EXCEEDED = 143


class PreemptionWatcher:
  """Turns SIGTERM/SIGINT into a stop request honoured at a step boundary.

  One process: the request is seen at the next step.  Several processes:
  the signal may reach only some of them, so every `sync_every` steps all
  processes OR their flags with one tiny all-gather and stop together.
  (jax's `multihost_utils.reached_preemption_sync_point` does the same in
  C++ but only for SIGTERM and only through its own signal handler, which
  the Python handler installed here would replace.)

  With `grace_s > 0`, a watchdog hard-exits with `EXIT_GRACE_EXCEEDED` if the
  process is still alive `grace_s` seconds after the first signal — the
  scheduler would SIGKILL it anyway; this way the log says why.  A second
  SIGINT interrupts immediately (Ctrl-C twice).
  """

  def __init__(self, sync_every: int = 10, grace_s: float = 0.0,
               signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self.sync_every = max(int(sync_every), 1)
    self.grace_s = float(grace_s)
    self.requested_at: float | None = None
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.requested_at is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    self.requested_at = time.monotonic()
    print(f"received {signal.Signals(signum).name}: stopping after the current step to "
          "write a checkpoint", file=sys.stderr, flush=True)
    if self.grace_s > 0:
      threading.Thread(target=self._watchdog, daemon=True).start()

  def _watchdog(self) -> None:
    time.sleep(self.grace_s)
    print(f"error: the checkpoint after the preemption signal did not finish within "
          f"reliability.preemption_grace_s={self.grace_s:g}s; exiting without it (the previous "
          "checkpoint is intact)", file=sys.stderr, flush=True)
    os._exit(EXIT_GRACE_EXCEEDED)  # noqa: SLF001 (sys.exit would only end this thread)

  @property
  def requested_here(self) -> bool:
    return self.requested_at is not None

  def should_stop(self, step: int) -> bool:
    """Whether every process stops after `step` (all processes call this every step)."""
    if jax.process_count() == 1:
      return self.requested_here
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.requested_here, np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    """Puts back the handlers that were installed before (for in-process callers, tests)."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# --- divergence ---------------------------------------------------------------


def all_finite(*trees: PyTree) -> jax.Array:
  """A scalar bool: every element of every (float) leaf is finite."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(trees)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where `ok`, else `old`, leaf by leaf (jittable; no host round-trip)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def nan_factor(step: jax.Array, nan_at_step: int) -> jax.Array:
  """NaN at (1-based) step `nan_at_step`, else 1: for testing the divergence path."""
  return jnp.where(step + 1 == nan_at_step, jnp.nan, 1.0).astype(jnp.float32)


class DivergenceMonitor:
  """Host side of the non-finite guard: stop at the first bad step, or count skips.

  `policy="stop"`: raise `TrainingDiverged` naming the first bad step.
  `policy="skip"`: the jitted step already dropped the update; raise only
  once more than `max_skipped` steps have been skipped in this run.
  """

  def __init__(self, policy: str, max_skipped: int):
    if policy not in ("stop", "skip"):
      raise UserError(f"reliability.on_nonfinite must be 'stop' or 'skip', got {policy!r}")
    self.policy = policy
    self.max_skipped = max_skipped
    self.skipped: list[int] = []
    self.last_good_checkpoint: int | None = None

  def observe(self, first_step: int, nonfinite: Sequence[Any]) -> None:
    """`nonfinite[i]` is the flag of step `first_step + i`."""
    bad = [first_step + i for i, flag in enumerate(nonfinite) if float(flag) > 0]
    if not bad:
      return
    keep = (f"the last good checkpoint (step {self.last_good_checkpoint}) is kept"
            if self.last_good_checkpoint else "no checkpoint was written in this run")
    if self.policy == "stop":
      raise TrainingDiverged(
          f"training diverged: non-finite loss or gradient at step {bad[0]}; {keep}. Lower "
          "optimizer.lr, enable optimizer.clip_norm, or set reliability.on_nonfinite=skip")
    self.skipped.extend(bad)
    for s in bad:
      print(f"warning: skipped step {s}: non-finite loss or gradient (update dropped; "
            f"{len(self.skipped)}/{self.max_skipped} allowed)", file=sys.stderr, flush=True)
    if len(self.skipped) > self.max_skipped:
      raise TrainingDiverged(
          f"training diverged: {len(self.skipped)} steps with non-finite loss or gradient "
          f"(steps {', '.join(map(str, self.skipped[:5]))}{', …' if len(self.skipped) > 5 else ''})"
          f" exceed reliability.max_skipped_steps={self.max_skipped}; {keep}")


def finite_mean(values: Sequence[float], nonfinite: Sequence[float]) -> float:
  """Mean over the steps that were not skipped (NaN if all were)."""
  kept = [float(v) for v, bad in zip(values, nonfinite) if not float(bad)]
  return float(np.mean(kept)) if kept else math.nan


# --- disk ---------------------------------------------------------------------


def tree_bytes(tree: PyTree) -> int:
  """Bytes of all array leaves (global sizes: what a checkpoint of `tree` stores)."""
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def disk_space_problem(free_bytes: int, checkpoint_bytes: int, keep: int) -> tuple[str, str]:
  """(error, warning) about fitting checkpoints into `free_bytes`; empty strings if fine.

  A save writes a new checkpoint next to the ones kept, so `keep + 1` of
  them must fit eventually; a single one must fit right now.
  """
  need_now = int(checkpoint_bytes * 1.1)  # metadata, data-iterator state, fs blocks
  if free_bytes < need_now:
    return (f"not enough disk space for one checkpoint: {_fmt(free_bytes)} free, about "
            f"{_fmt(need_now)} needed; free space or choose another --workdir"), ""
  need_all = need_now * (max(keep, 1) + 1)
  if free_bytes < need_all:
    return "", (f"warning: {_fmt(free_bytes)} free may not hold keep_checkpoints={keep} "
                f"checkpoints plus the one being written (about {_fmt(need_all)})")
  return "", ""


def check_disk_space(directory: str, checkpoint_bytes: int, keep: int) -> None:
  """Raises `UserError` when `directory` cannot hold one checkpoint; warns when tight."""
  os.makedirs(directory, exist_ok=True)
  error, warning = disk_space_problem(shutil.disk_usage(directory).free, checkpoint_bytes, keep)
  if error:
    raise UserError(f"{directory}: {error}")
  if warning:
    print(f"{warning} in {directory}", file=sys.stderr, flush=True)


def _fmt(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"
