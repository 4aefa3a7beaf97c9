"""Threefry random bits on CPU as one fused loop instead of a rolled `while`.

JAX lowers the threefry2x32 hash on CPU as a `while` of five iterations
(four rounds each), to keep compile times short; on GPU and TPU it emits the
twenty rounds straight-line.  Rolled, every iteration is a separate pass
over the whole `u32` array with its loop-carried copies, single-threaded:
drawing 1M normals takes ~9 ms on the 2-core AMD EPYC box.  Straight-line,
XLA fuses the rounds into one parallel loop that keeps the state in
registers: ~3 ms, **the same bits** (one algorithm, two lowerings).  Every
draw in a step benefits: the variational transforms' ε (one normal per
weight per step: the largest cost of `variational` over dense on CPU),
dropout masks, sampling in generation.  The price is compile time: each
random draw in a program adds ~20 rounds of element-wise HLO.

`config.perf.cpu_unrolled_threefry` (default True) turns it on in the
trainer, except in a process that compiles with most of XLA's optimisations
off (`JAX_DISABLE_MOST_OPTIMIZATIONS=1`, as the test suite does): such a
process has chosen short compiles over fast programs, and the straight-line
rounds are the opposite trade (`unrolled_wanted`).
`use_unrolled_threefry_on_cpu(False)` restores JAX's default.  It changes how
programs compiled *afterwards* are lowered, in this process.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.interpreters import mlir

try:  # JAX's private module: where the lowering rules live (jax 0.10–0.12)
  from jax._src.random import threefry2x32 as _threefry
  _RULES = (_threefry._threefry2x32_lowering_rule, _threefry._threefry2x32_cpu_lowering_rule)
except (ImportError, AttributeError):  # another JAX: keep its own lowering
  _threefry, _RULES = None, None


def unrolled_wanted(requested: bool) -> bool:
  """The trainer's choice: `requested` (config.perf.cpu_unrolled_threefry), unless this process
  compiles with most of XLA's optimisations off.

  There the unrolled rounds cost compile time that nothing gets back: a 2-layer classifier's
  train step on 8 CPU devices compiled in 8.1 s unrolled and 3.5 s rolled on the 2-core box,
  and a test's program runs a few times.  The bits are the same either way.
  """
  return bool(requested) and not jax.config.values.get("jax_disable_most_optimizations", False)


def use_configured_lowering(config: Any) -> bool:
  """What the trainer (and a benchmark compiling its step) sets before compiling: the lowering
  `config.perf.cpu_unrolled_threefry` asks for, as `unrolled_wanted` decides."""
  return use_unrolled_threefry_on_cpu(
      unrolled_wanted(config.perf.get("cpu_unrolled_threefry", True)))


def use_unrolled_threefry_on_cpu(enabled: bool = True) -> bool:
  """Registers the straight-line (or, `enabled=False`, JAX's rolled) CPU lowering.

  Returns whether this JAX has the rules to switch; where it does not, the
  call changes nothing (results are identical either way).
  """
  if _RULES is None:
    return False
  unrolled, rolled = _RULES
  mlir.register_lowering(_threefry.threefry2x32_p, unrolled if enabled else rolled,
                         platform="cpu")
  return True
