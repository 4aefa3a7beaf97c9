"""Per-device parameter and optimizer bytes under FSDP on a simulated 8-device CPU mesh.

A memory check, not a speed one: with `mesh = {fsdp: 8}` every parameter
with a dimension the `embed → fsdp` rule can split holds 1/8 of its bytes on
each device; the rest (e.g. a bias along `mlp`, replicated because
`mlp → tensor` and tensor = 1) is listed.  Runs in a child process because
the device count is fixed when JAX starts.

  python -m bench.fsdp '{"overrides": {...}, "vocab": 65, "devices": 8}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes_on(tree: Any, device: Any) -> int:
  import jax  # noqa: PLC0415
  total = 0
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      if shard.device == device:
        total += shard.data.size * shard.data.dtype.itemsize
  return total


def probe(spec: dict[str, Any]) -> dict[str, Any]:
  import jax  # noqa: PLC0415

  from bench.lm_step import StepRunner, quickstart_config  # noqa: PLC0415
  n = spec["devices"]
  overrides = dict(spec["overrides"], **{"mesh.data": 1, "mesh.fsdp": n, "mesh.tensor": 1})
  runner = StepRunner(quickstart_config(**overrides), spec["vocab"])
  runner.run(0)  # the sharded step runs, and keeps the layout
  params, opt = runner.state.params, runner.state.opt_state
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  total_opt = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt))
  per_device = [_bytes_on(params, d) for d in jax.devices()]
  replicated = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(params)
                if x.sharding.is_fully_replicated]
  return {"devices": jax.device_count(), "param_bytes_total": total,
          "param_bytes_per_device_max": max(per_device),
          "param_bytes_per_device_min": min(per_device),
          "ideal_per_device": total / n,
          "opt_bytes_total": total_opt,
          "opt_bytes_per_device_max": max(_bytes_on(opt, d) for d in jax.devices()),
          "replicated_leaves": replicated}


def measure(overrides: dict[str, Any], vocab: int, devices: int = 8,
            timeout: int = 1800) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  spec = {"overrides": overrides, "vocab": vocab, "devices": devices}
  proc = subprocess.run([sys.executable, "-m", "bench.fsdp", json.dumps(spec)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
    raise RuntimeError(f"fsdp probe failed ({proc.returncode}): {last[0]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  print(json.dumps(probe(json.loads(sys.argv[1]))))
