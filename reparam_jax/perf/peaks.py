"""Peak FLOP/s per device: vendors' dense bf16 figures, or a measured CPU matmul.

Published peaks are per chip, dense (no 2:4 sparsity), bf16 with fp32
accumulation; sources are listed in docs/performance.md.  A CPU has no
published figure that means anything for XLA, so its "peak" is what a large
jitted matmul achieves on this machine right now (at start-up, in the
model's compute dtype); `config.perf.peak_flops` overrides either.
"""

from __future__ import annotations

import functools

import time
from typing import Any

import jax
import jax.numpy as jnp

# (substring of `device.device_kind`, lower-cased; name; dense bf16 FLOP/s).
# Ordered: the first match wins, so more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, str, float], ...] = (
    ("h200", "NVIDIA H200", 989e12),
    ("h100 pcie", "NVIDIA H100 PCIe", 756e12),
    ("h100", "NVIDIA H100 SXM", 989e12),
    ("a100", "NVIDIA A100", 312e12),
    ("v6 lite", "TPU v6e", 918e12),
    ("v6e", "TPU v6e", 918e12),
    ("v5 lite", "TPU v5e", 197e12),
    ("v5e", "TPU v5e", 197e12),
    ("v5p", "TPU v5p", 459e12),
    ("tpu v5", "TPU v5p", 459e12),
    ("v4", "TPU v4", 275e12),
)


def published_peak(device_kind: str) -> tuple[str, float] | None:
  """(name, dense bf16 FLOP/s) for a `device_kind`, or None if not in the table."""
  kind = device_kind.lower()
  for key, name, flops in PEAK_BF16_FLOPS:
    if key in kind:
      return name, flops
  return None


def measure_matmul_flops(n: int = 1024, dtype: Any = jnp.float32, repeats: int = 5,
                         device: Any = None) -> float:
  """Best-of-`repeats` FLOP/s of an `n×n @ n×n` jitted matmul on one device."""
  device = device or jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  # A chain of 4 dependent products amortises the dispatch of one call.
  f = jax.jit(lambda x: x @ x @ x @ x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 4 * 2 * n**3 / best


@functools.cache
def _measured_once(dtype_name: str, device: Any) -> float:
  """A device's matmul FLOP/s, measured once per process (it does not change within one;
  a process that trains several runs, as the test suite's workers do, pays once)."""
  return measure_matmul_flops(dtype=jnp.dtype(dtype_name), device=device)


def device_peak_flops(override: float = 0.0, dtype: Any = jnp.float32,
                      device: Any = None) -> tuple[float, str]:
  """(peak FLOP/s per device, where the number comes from).

  Priority: a positive `override` (config.perf.peak_flops); the published
  table for accelerators; otherwise a matmul measured now.  Simulated CPU
  devices (`--xla_force_host_platform_device_count`) share the host's cores,
  so the measured figure is split evenly between them.
  """
  if override > 0:
    return float(override), "config.perf.peak_flops"
  device = device or jax.local_devices()[0]
  found = published_peak(device.device_kind)
  if found is not None:
    return found[1], f"published dense bf16 peak of {found[0]}"
  measured = _measured_once(jnp.dtype(dtype).name, device)
  shared = sum(1 for d in jax.local_devices() if d.platform == device.platform)
  note = f"measured {jnp.dtype(dtype).name} matmul on {device.platform}"
  if shared > 1:
    note += f", split over {shared} simulated devices"
  return measured / shared, note
