r"""This machine's memory read bandwidth: the ceiling of a decode step that reads every weight.

  python -m bench.membw [--gib 1] [--rounds 7]

Three STREAM-like read-only kernels over one float32 array of `--gib` GiB (far larger
than any cache, so each pass comes from DRAM), each timed `--rounds` times, the median
reported as bytes read / second (GB/s = 1e9 bytes/s):

  jax_sum      `jax.jit(jnp.sum)` on the CPU device: what XLA's own reduction reaches
  numpy_sum    `np.sum` on one thread
  numpy_sum_T  `np.sum` over T equal slices in T threads at once (T = the cores this
               process may use; NumPy drops the GIL inside the sum): the whole machine

The largest of them is `best_gbps`, the figure a decode step's achieved bytes/s is
compared with.  A sum reads each byte once and writes nothing, so it is a read
bandwidth (STREAM's "sum"/read kernel, not its copy or triad, which also write).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _median_s(fn: Callable[[], Any], rounds: int) -> float:
  fn()  # warm: page faults, compile
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _threaded_sum(a: np.ndarray, threads: int) -> float:
  parts = np.array_split(a, threads)
  sums = [0.0] * threads

  def work(i: int) -> None:
    sums[i] = float(parts[i].sum())

  pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
  for t in pool:
    t.start()
  for t in pool:
    t.join()
  return sum(sums)


def measure(gib: float = 1.0, rounds: int = 7) -> dict[str, Any]:
  """Read bandwidth in GB/s of each kernel (module docstring) over a `gib` GiB array."""
  import jax
  import jax.numpy as jnp

  n = int(gib * 2**30) // 4
  host = np.random.default_rng(0).random(n, np.float32)
  nbytes = host.nbytes
  threads = len(os.sched_getaffinity(0))
  gbps = {}
  gbps["numpy_sum"] = nbytes / _median_s(lambda: host.sum(), rounds) / 1e9
  gbps[f"numpy_sum_{threads}"] = nbytes / _median_s(lambda: _threaded_sum(host, threads),
                                                    rounds) / 1e9
  device = jax.device_put(host)
  del host
  jsum = jax.jit(jnp.sum)
  gbps["jax_sum"] = nbytes / _median_s(lambda: jsum(device).block_until_ready(), rounds) / 1e9
  return {"array_bytes": nbytes, "rounds": rounds, "threads": threads, "gbps": gbps,
          "best": max(gbps, key=gbps.get), "best_gbps": max(gbps.values())}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gib", type=float, default=1.0, help="array size in GiB")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args(argv)
  from bench.timing import cpu_model
  out = {"cpu": cpu_model(), **measure(args.gib, args.rounds)}
  print(f"memory read bandwidth, {out['array_bytes'] / 2**30:.2f} GiB float32, median of "
        f"{args.rounds}, CPU {out['cpu']}: " +
        "   ".join(f"{k} {v:.1f} GB/s" for k, v in out["gbps"].items()))
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
