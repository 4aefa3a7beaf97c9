"""Leaf layers of the Transformer: Dense, Embed, LayerNorm.

They differ from the stock Flax layers in two ways that matter for the rest of
the project:

* every parameter carries logical axis names (see `reparam_jax/sharding.py`),
  so the same model shards on any mesh given a rules table;
* `Dense` accepts a *structured* kernel: anything with a `left_matmul(x)`
  method (e.g. a low-rank `U Vᵀ`).  A reparameterization interceptor can then
  hand the layer a factored weight and the layer multiplies `(x U) Vᵀ` without
  forming the dense `d_in × d_out` matrix.  The layer does not know which
  reparameterization produced the kernel; it only knows the protocol.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]
LogicalAxes = tuple[str | None, ...]


def materialize(kernel: Any) -> Array:
  """The dense array behind a possibly-structured kernel."""
  return kernel.dense() if hasattr(kernel, "dense") else kernel


def cast(tree: Any, dtype: Any) -> Any:
  """Casts every floating leaf of an array or structured kernel to `dtype`."""
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def matmul(x: Array, kernel: Any, bias: Array | None = None) -> Array:
  """`x[..., d_in] @ kernel[d_in, d_out] + bias` for dense or structured kernels."""
  if hasattr(kernel, "left_matmul"):
    y = kernel.left_matmul(x)
    return y if bias is None else y + bias
  # A 2-D dot over flattened rows: its backward `dW = xᵀ·dy` needs no
  # batched-transpose copies of the activation gradient.
  x_NxI = x.reshape(-1, x.shape[-1])
  if bias is not None and jax.default_backend() == "cpu":
    # [x, 1] @ [W; b]: the dot's weight gradient then carries the bias
    # gradient.  XLA:CPU computes the bias gradient `Σ_rows dy` as a strided
    # reduce-window, ~10 % of the quick-start step (docs/performance.md).
    # Not on accelerators: there the reduction is cheap and the extra row
    # would break the sharding of the contracted axis.
    ones_Nx1 = jnp.ones((x_NxI.shape[0], 1), x_NxI.dtype)
    x_NxI = jnp.concatenate([x_NxI, ones_Nx1], axis=1)
    kernel, bias = jnp.concatenate([kernel, bias[None, :]], axis=0), None
  y_NxO = jnp.dot(x_NxI, kernel)
  if bias is not None:
    y_NxO = y_NxO + bias
  return y_NxO.reshape(*x.shape[:-1], kernel.shape[-1])


def _param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
           axes: LogicalAxes, dtype: Any) -> Any:
  # `self.variable` instead of `self.param`: `param` re-checks the stored
  # value's leaf shapes against the initializer, which rejects a structured
  # kernel (a pytree of factors) handed in by a variable interceptor.
  boxed_init = nn.with_logical_partitioning(init, axes)
  return module.variable(
      "params", name, lambda: boxed_init(module.make_rng("params"), tuple(shape), dtype)).value


class Dense(nn.Module):
  """`y = x @ kernel + bias` with logical axis names on both parameters."""

  features: int
  axes: LogicalAxes  # (input axis, output axis) of the kernel
  use_bias: bool = True
  dtype: Any = None  # compute dtype; parameters stay in `param_dtype`
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                    self.axes, self.param_dtype)
    dtype = self.dtype or x.dtype
    bias = None
    if self.use_bias:
      bias = _param(self, "bias", nn.initializers.zeros, (self.features,), self.axes[-1:],
                    self.param_dtype).astype(dtype)
    return matmul(x.astype(dtype), cast(kernel, dtype), bias)


class Embed(nn.Module):
  """Lookup table `[num_embeddings, features]`; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  axes: LogicalAxes = ("vocab", "embed")
  dtype: Any = None
  param_dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(0.02)

  def setup(self):
    self.embedding = _param(self, "embedding", self.embedding_init,
                            (self.num_embeddings, self.features), self.axes, self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    table = cast(materialize(self.embedding), self.dtype)
    return jnp.take(table, ids, axis=0)

  def attend(self, x: Array) -> Array:
    """Logits `x @ tableᵀ` (weight tying with the output layer)."""
    table = cast(materialize(self.embedding), self.dtype or x.dtype)
    return jnp.einsum("...e,ve->...v", x.astype(table.dtype), table)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with logically-named scale and bias.

  Statistics are computed in float32 even under bf16 compute: the variance of
  a bf16 activation loses too many bits to be a stable normaliser.
  """

  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = _param(self, "scale", nn.initializers.ones, (d,), (self.axis_name,), self.param_dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (d,), (self.axis_name,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * materialize(scale) + materialize(bias)
    return y.astype(self.dtype or x.dtype)
