"""(IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
Cheaper than In-Context Learning"): a frozen base W₀ whose output or input
features are rescaled by one trained vector.

The paper rescales keys and values (l_k ⊙ K, l_v ⊙ V) and the FFN's inner
activation (l_ff ⊙ γ(W₁ x)).  As a transform of one `[d_in, d_out]` kernel
(`y = x W`):

  side=output  y = (x W₀) ⊙ l = x (W₀ diag(l)),  l: [d_out]   (key, value projections)
  side=input   y = (x ⊙ l) W₀ = x (diag(l) W₀),  l: [d_in]    (the FFN's second matrix, fc_out)

so l scales W₀'s columns or rows; the FFN case puts l_ff on the input of the
matrix after the activation, as the paper and PEFT's `feedforward_modules` do.
l starts at ones (the model starts exactly at W₀); only l trains.

Difference from PEFT with a bias: PEFT scales the whole layer output,
(x W₀ + bias) ⊙ l, for side output; a kernel transform scales W₀ only,
x W₀ ⊙ l + bias.  The two agree at init, for side input (PEFT scales the input
there too), and for bias-free layers (T5/T0, the paper's models, and LLaMA).
With a frozen bias (a `frozen` rule, the usual (IA)³ setting) PEFT's
effective bias is l ⊙ bias₀ and ours stays bias₀: a different model once l
moves.  A trainable bias (no rule on it) contains PEFT's case (bias = l ⊙ bias₀
is one of its values) at d_out more trained parameters; there is no way to
share l between the kernel's θ and the bias, which are separate parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, WrapperTransform, register
from reparam_jax.reparam.kernels import materialize, matmul
from reparam_jax.reparam.numerics import need_2d

# Spelled out: a bare `in` is a Python keyword, so `ia3(side=in)` would not parse.
SIDES = ("output", "input")


@flax.struct.dataclass
class IA3Kernel:
  """`W = base diag(l)` (side output) or `diag(l) base` (side input), never formed to multiply."""

  base: Any
  l: Array
  side: str = flax.struct.field(pytree_node=False)

  def left_matmul(self, x: Array) -> Array:
    if self.side == "output":
      return matmul(x, self.base) * self.l
    return matmul(x * self.l, self.base)

  def dense(self) -> Array:
    w = materialize(self.base)
    return w * self.l if self.side == "output" else self.l[:, None] * w


@register
@dataclasses.dataclass(frozen=True)
class IA3(WrapperTransform):
  """θ = {base: θ of the previous stage (W₀ alone), ia3_l: [d_out] or [d_in], ones at init}."""

  name: ClassVar[str] = "ia3"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = ("ia3", "ia3(side=input)")
  keys: ClassVar[tuple[str, ...]] = ("ia3_l",)
  # l multiplies W₀: decay toward 0 would switch the layer off, not return to W₀.
  decayed: ClassVar[tuple[str, ...] | None] = ()
  side: str = "output"  # output: scale W's columns (layer output); input: its rows

  def arg_problems(self):
    if self.side not in SIDES:
      return [f"side={self.side!r}; expected 'output' (keys, values) or 'input' (the FFN's fc_out)"]
    return []

  def check(self, shape):
    need_2d("ia3", shape)
    for problem in self.arg_problems():  # also for specs that skip config validation
      raise UserError(f"ia3: {problem}")

  def wrap_init(self, key, base, shape, dtype, std):
    del key, base, std
    return {"ia3_l": jnp.ones((shape[1] if self.side == "output" else shape[0],), dtype)}

  def wrap_apply(self, theta, base_w, rng):
    del rng
    return IA3Kernel(base_w, theta["ia3_l"], self.side)

  def leaf_axes(self, names):
    return {"ia3_l": (names[1] if self.side == "output" else names[0],)}

  def wrap_flops(self, theta, base_flops, shape=None):
    # Matmul FLOPs only (as the report counts them): l adds one multiply per
    # output (or input) feature per token and no matmul.
    del theta, shape
    return base_flops


def merge(ia3: IA3, base_w: Any, l: Array) -> Array:
  """W₀ diag(l) or diag(l) W₀: the dense weight to deploy without the adapter."""
  return IA3Kernel(base_w, l, ia3.side).dense()

