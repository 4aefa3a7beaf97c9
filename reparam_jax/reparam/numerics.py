"""Small numerics shared by the transforms."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError

Array = jax.Array


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
  """‖x‖ with a finite (zero) gradient at x = 0, where `sqrt` has an infinite one."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def rms(w: Array) -> Array:
  """Root mean square (a traced scalar: init and conversion may run under jit)."""
  if not w.size:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.square(w.astype(jnp.float32))))


def softplus_inv(y: Array | float) -> Array:
  """ρ with softplus(ρ) = y (y > 0), stable for small and large y."""
  y = jnp.asarray(y)
  return y + jnp.log(-jnp.expm1(-y))


def need_2d(name: str, shape: tuple[int, ...]) -> None:
  if len(shape) != 2:
    raise UserError(f"{name} needs a 2-D [d_in, d_out] weight, got shape {tuple(shape)}; "
                    "restrict the rule's regex to kernels (e.g. '.*/kernel'), or for an N-D "
                    "kernel add in_axes=K to the spec (its first K axes are the input)")


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(x.shape)
