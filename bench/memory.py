"""Peak memory of a train step per variant, each in a fresh process.

A process's peak RSS only grows, so comparing variants needs one process
each.  On accelerators `device.memory_stats()['peak_bytes_in_use']` is the
figure; on CPU (no memory stats) it is the host's peak RSS, reported with
the RSS of a process that only started JAX (the floor every variant pays).

  python -m bench.memory '{"overrides": {...}, "vocab": 65, "rules": [], "steps": 2}'
prints one JSON line: {"peak_rss_bytes": ..., "device_peak_bytes": ... | null}.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any

from bench.suites import DEVICES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_bytes() -> int:
  # VmHWM belongs to this process image; ru_maxrss would carry over the
  # parent's peak across fork+exec (Linux keeps it in the signal struct).
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _device_peak_bytes() -> int | None:
  import jax  # noqa: PLC0415
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def probe(spec: dict[str, Any]) -> dict[str, Any]:
  """Runs in the child: build the variant (or nothing), run its steps, measure."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  if spec.get("baseline"):
    jnp.ones(()).block_until_ready()  # start the runtime, allocate nothing to speak of
  else:
    from bench.lm_step import StepRunner, quickstart_config  # noqa: PLC0415
    config = quickstart_config(**spec["overrides"])
    config.reparam.rules = tuple(tuple(r) for r in spec["rules"])
    runner = StepRunner(config, spec["vocab"])
    for i in range(spec["steps"]):
      runner.run(i)
  return {"peak_rss_bytes": peak_rss_bytes(), "device_peak_bytes": _device_peak_bytes(),
          "platform": jax.devices()[0].platform}


def measure(spec: dict[str, Any], env: dict[str, str] | None = None,
            timeout: int = 1800) -> dict[str, Any]:
  """Runs `probe(spec)` in a fresh interpreter and returns its result."""
  full_env = dict(os.environ, **(env or {}))
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-m", "bench.memory", json.dumps(spec)], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
    raise RuntimeError(f"memory probe failed ({proc.returncode}): {last[0]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def variant_memory(variants: dict[str, tuple], overrides: dict[str, Any], vocab: int,
                   steps: int) -> list[dict[str, Any]]:
  # Each probe is a fresh process on JAX's default (one) CPU device.
  overrides = {k: v for k, v in overrides.items() if k != DEVICES}
  floor = measure({"baseline": True})
  rows = [dict(variant="(jax runtime only)", **floor)]
  for label, rules in variants.items():
    try:
      out = measure({"overrides": overrides, "vocab": vocab, "rules": [list(r) for r in rules],
                     "steps": steps})
    except RuntimeError as e:
      rows.append(dict(variant=label, error=str(e).splitlines()[0][:200]))
      continue
    out["rss_over_runtime_bytes"] = out["peak_rss_bytes"] - floor["peak_rss_bytes"]
    rows.append(dict(variant=label, **out))
  return rows


if __name__ == "__main__":
  print(json.dumps(probe(json.loads(sys.argv[1]))))
