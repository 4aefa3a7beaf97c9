"""Shared fixtures for the reparameterization tests (CPU, tiny shapes)."""

from __future__ import annotations

import os

# 8 simulated CPU devices for the sharding test; must precede JAX's start-up
# (tests/conftest.py sets the same; this covers running this folder alone).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Float64 for numerical gradient checks; restored afterwards."""
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", prev)
