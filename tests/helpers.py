"""Shared test utilities: run the real trainer on a tiny config."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "lm", "shakespeare_char.py")

# A model small enough that a few steps take well under a second.
TINY = {
    "model.num_layers": "1", "model.num_heads": "2", "model.embed_dim": "16",
    "model.mlp_dim": "32", "seq_len": "16", "batch_size": "8", "eval_batch_size": "64",
    "log_every": "1", "eval_every": "5", "checkpoint_every": "5",
    "optimizer.warmup_steps": "2",
}


def tiny_args(workdir: str, raw_dir: str, tfds_dir: str, **overrides: str) -> list[str]:
  cfg = dict(TINY, **{"data.raw_dir": raw_dir, "data.tfds_dir": tfds_dir})
  cfg.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
  return [f"--config={QUICKSTART}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in cfg.items()]


def run_train_subprocess(args: list[str], env: dict | None = None, devices: int = 1,
                         timeout: int = 300) -> subprocess.CompletedProcess:
  full_env = dict(os.environ, **(env or {}))
  full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "reparam_jax.train", *args], env=full_env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)
