"""config.perf.cpu_devices: the CPU backend starts as N devices (train.configure_cpu_devices)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reparam_jax.config import load as config_load
from reparam_jax.config import validate as config_validate
from reparam_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Fresh interpreters: the device count is fixed once JAX's backend starts.
SCRIPT = """
import sys, jax
from reparam_jax.training.devices import configure_cpu_devices
configure_cpu_devices(2)
print("devices", jax.local_device_count())
configure_cpu_devices(3)  # too late: JAX has started; a warning, not a crash
print("devices", jax.local_device_count())
"""


def _run(xla_flags: str | None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=120, cwd=REPO)


def test_cpu_devices_sets_the_device_count_before_jax_starts():
  proc = _run(None)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split("\n")[:2] == ["devices 2", "devices 2"]
  assert "cpu_devices=3 ignored: JAX's CPU backend already started with 2 devices" in proc.stderr


def test_explicit_xla_device_count_flag_wins():
  proc = _run("--xla_force_host_platform_device_count=3")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split("\n")[:2] == ["devices 3", "devices 3"]
  assert "ignored" not in proc.stderr


def test_negative_cpu_devices_is_a_config_error():
  config = config_load.load_config_file(os.path.join(REPO, "configs", "lm", "shakespeare_char.py"))
  config.perf.cpu_devices = -1
  with pytest.raises(UserError, match=r"config.perf.cpu_devices=-1: expected 0 .JAX's default."):
    config_validate.validate_config(config)
