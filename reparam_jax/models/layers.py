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

import functools
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
  if bias is not None and _sum_rows_by_dot():
    # [x, 1] @ [W; b]: the dot's weight gradient then carries the bias gradient.
    ones_Nx1 = jnp.ones((x_NxI.shape[0], 1), x_NxI.dtype)
    x_NxI = jnp.concatenate([x_NxI, ones_Nx1], axis=1)
    kernel, bias = jnp.concatenate([kernel, bias[None, :]], axis=0), None
  y_NxO = jnp.dot(x_NxI, kernel)
  if bias is not None:
    y_NxO = y_NxO + bias
  return y_NxO.reshape(*x.shape[:-1], kernel.shape[-1])


def _sum_rows_by_dot() -> bool:
  """Whether parameter gradients should sum over rows inside a dot.

  XLA:CPU computes a gradient summed over the batch and length axes
  (`Σ_rows dy` for a bias or a LayerNorm scale) as a strided reduce-window,
  ~10 % of the quick-start step; inside a dot the same sum is cheap
  (docs/performance.md).  Not on accelerators: there the reduction is cheap,
  and an extra row or column would break the sharding of the contracted axis.
  """
  return jax.default_backend() == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
  """`(x − mean) / sqrt(var + ε) · scale + bias` over the last axis, with a hand-written VJP.

  The backward is the textbook closed form over the saved normalised input;
  with the CPU row sums of `_sum_rows_by_dot` it makes the quick start's
  train step 2–4 % faster than XLA's autodiff of the forward
  (docs/performance.md).
  """
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x: Array, scale: Array, bias: Array, epsilon: float
                    ) -> tuple[Array, tuple[Array, ...]]:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(var + epsilon)
  x_hat = (x - mean) * rstd
  return x_hat * scale + bias, (x_hat, rstd, scale, bias)


def _layer_norm_bwd(epsilon: float, residuals: tuple[Array, ...], dy: Array
                    ) -> tuple[Array, Array, Array]:
  del epsilon
  x_hat, rstd, scale, bias = residuals
  dx_hat = dy * scale
  dx = rstd * (dx_hat - dx_hat.mean(-1, keepdims=True)
               - x_hat * (dx_hat * x_hat).mean(-1, keepdims=True))
  d = dy.shape[-1]
  if _sum_rows_by_dot():
    both_Nx2D = jnp.concatenate([dy * x_hat, dy], axis=-1).reshape(-1, 2 * d)
    sums = jnp.dot(jnp.ones((both_Nx2D.shape[0],), dy.dtype), both_Nx2D)
    dscale, dbias = sums[:d], sums[d:]
  else:
    rows = tuple(range(dy.ndim - 1))
    dscale, dbias = (dy * x_hat).sum(rows), dy.sum(rows)
  return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


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
    y = layer_norm(x.astype(jnp.float32), materialize(scale), materialize(bias), self.epsilon)
    return y.astype(self.dtype or x.dtype)


class RMSNorm(nn.Module):
  """`x / sqrt(mean(x²) + ε) · scale` (Zhang & Sennrich 2019; T5's "layer norm").

  No mean subtraction and no bias; statistics in float32 like `LayerNorm`.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,),
                   self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.epsilon)
    return (y * materialize(scale)).astype(self.dtype or x.dtype)
