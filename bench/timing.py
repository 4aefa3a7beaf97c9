"""Interleaved timing: every variant in one process, round-robin, medians and ratios.

Round-robin spreads machine-load drift (other jobs on a shared host) over
all variants alike, so ratios stay meaningful when absolute times are not.
Each step is timed twice: wall clock, and this process's CPU time (all
threads) — the latter barely moves when other processes compete for the
cores, which makes it the steadier basis for ratios on a busy machine.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping


def _cpu_seconds() -> float:
  return time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: all threads, ns resolution


def interleaved(runs: Mapping[str, Callable[[int], object]], steps: int, warmup: int
                ) -> dict[str, dict[str, float]]:
  """{name: {wall_ms, cpu_ms, wall_min_ms}} medians over `steps` synchronous calls each."""
  for i in range(warmup):
    for run in runs.values():
      run(i)
  wall: dict[str, list[float]] = {n: [] for n in runs}
  cpu: dict[str, list[float]] = {n: [] for n in runs}
  names = list(runs)
  for i in range(steps):
    # Alternate the order each round so no variant always follows the same one.
    for name in (names if i % 2 == 0 else names[::-1]):
      run = runs[name]
      c0, t0 = _cpu_seconds(), time.perf_counter()
      run(warmup + i)
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(_cpu_seconds() - c0)
  return {n: {"wall_ms": 1e3 * statistics.median(wall[n]),
              "cpu_ms": 1e3 * statistics.median(cpu[n]),
              "wall_min_ms": 1e3 * min(wall[n])} for n in runs}


def load_average() -> float:
  return os.getloadavg()[0]


def cpu_model() -> str:
  """The CPU's model name (`lscpu`'s), which every CPU figure names."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"
