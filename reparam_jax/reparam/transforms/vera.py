"""VeRA (Kopiczko et al. 2024): frozen base W₀ plus a shared random low-rank update
whose only trained parameters are two scaling vectors.

The paper, for a `[d_out, d_in]` weight: W = W₀ + Λ_b B Λ_d A, with
A: [r, d_in] and B: [d_out, r] frozen random matrices shared by every adapted
layer, Λ_d = diag(d) (d: [r], every entry `d_initial` at init) and
Λ_b = diag(b) (b: [d_out], 0 at init, so the model starts exactly at W₀).
Our kernels are `[d_in, d_out]` (`y = x W`), so the same update is the
transpose,

  W = W₀ + Aᵀ Λ_d Bᵀ Λ_b,    y = x W₀ + (((x Aᵀ) ⊙ d) Bᵀ) ⊙ b,

with Aᵀ: [d_in, r] and Bᵀ: [r, d_out] (called `proj_a`, `proj_b` below).

Sharing without storage: the paper (and PEFT) keeps one pair sized for the
largest layer and slices it to each layer's shape.  Here the pair is a
*counter-based* random function of the index: entry (i, k) of Aᵀ is
Threefry-2x32(seed, 0; i, k) mapped to U(−1, 1), entry (k, j) of Bᵀ uses
(seed, 1; j, k), so it never depends on the layer's shape.  Every layer's
Aᵀ is the first d_in rows of one unbounded [∞, r] matrix and its Bᵀ the first
d_out columns of one [r, ∞] matrix: the slice of one shared pair, regenerated
inside `apply` (a few hash rounds per entry, per step, not per token) and
never stored, so it costs no parameters, no checkpoint space and no optimizer
state, and it is bit-identical across JAX versions (Threefry is a fixed
function; `jax.random`'s shape-to-counter mapping has changed before).

Scale (PEFT's `_kaiming_init`: gain √2, fan-in of the stored tensor): Bᵀ
entries are U(±√(6/r)); Aᵀ entries are U(±√(6/fan_in)) where PEFT's fan-in is
the largest d_in among the adapted layers.  A per-weight transform cannot see
the other layers, so `fan_in` is an argument: 0 (the default) uses the
layer's own d_in, which equals PEFT whenever the adapted layers share d_in
(the paper's query/value setting); set it to the largest d_in to make layers
of different d_in use literally the same Aᵀ entries.  (A different bound is a
constant factor that d absorbs: it only rescales d's initial value and step.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, WrapperTransform, positive_int, register
from reparam_jax.reparam.kernels import materialize, matmul
from reparam_jax.reparam.numerics import need_2d

_SALT_A, _SALT_B = 0, 1  # second Threefry key word: independent streams for Aᵀ and Bᵀ


def counter_bits(seed: int, salt: int, rows_R: Array, cols_C: Array) -> Array:
  """Threefry-2x32 of the counter pair (rows, cols) under key (seed, salt): uint32, elementwise."""
  shape = jnp.broadcast_shapes(rows_R.shape, cols_C.shape)
  u32 = jnp.uint32
  return threefry2x32_p.bind(
      jnp.full(shape, seed, u32), jnp.full(shape, salt, u32),
      jnp.broadcast_to(rows_R.astype(u32), shape), jnp.broadcast_to(cols_C.astype(u32), shape))[0]


def _symmetric_uniform(bits: Array) -> Array:
  """uint32 → U[−1, 1) in float32 (23 random mantissa bits, as `jax.random.uniform`)."""
  one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  return 2.0 * (one_to_two - 1.0) - 1.0


def projections(seed: int, rank: int, d_in: int, d_out: int, fan_in: int = 0,
                dtype: Any = jnp.float32) -> tuple[Array, Array]:
  """The shared frozen pair sliced to one layer: (Aᵀ [d_in, r], Bᵀ [r, d_out]).

  Aᵀ[i, k] depends on (seed, i, k) only and Bᵀ[k, j] on (seed, j, k) only, so a
  smaller layer gets a leading slice of a larger one's matrices (module docstring).
  """
  i_Ix1 = jnp.arange(d_in, dtype=jnp.uint32)[:, None]
  j_1xO = jnp.arange(d_out, dtype=jnp.uint32)[None, :]
  k_1xR = jnp.arange(rank, dtype=jnp.uint32)[None, :]
  a_IxR = _symmetric_uniform(counter_bits(seed, _SALT_A, i_Ix1, k_1xR))
  b_RxO = _symmetric_uniform(counter_bits(seed, _SALT_B, j_1xO, k_1xR.T))
  bound_a = math.sqrt(6.0 / (fan_in or d_in))
  bound_b = math.sqrt(6.0 / rank)
  return (bound_a * a_IxR).astype(dtype), (bound_b * b_RxO).astype(dtype)


@flax.struct.dataclass
class VeRAKernel:
  """`W = base + proj_a_IxR diag(d_R) proj_b_RxO diag(b_O)`; multiplies without forming ΔW."""

  base: Any
  proj_a: Array
  proj_b: Array
  d: Array
  b: Array

  def left_matmul(self, x: Array) -> Array:
    return matmul(x, self.base) + (((x @ self.proj_a) * self.d) @ self.proj_b) * self.b

  def dense(self) -> Array:
    return materialize(self.base) + ((self.proj_a * self.d) @ self.proj_b) * self.b


@register
@dataclasses.dataclass(frozen=True)
class VeRA(WrapperTransform):
  """θ = {base: θ of the previous stage (W₀ alone), vera_d: [r], vera_b: [d_out]}."""

  name: ClassVar[str] = "vera"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = ("vera(rank=2)", "vera(rank=8, d_initial=0.5, seed=3)")
  keys: ClassVar[tuple[str, ...]] = ("vera_d", "vera_b")
  # Both vectors are factors of ΔW whose zero is the base model (as LoRA's A and B).
  decayed: ClassVar[tuple[str, ...] | None] = ("vera_d", "vera_b")
  rank: int = 8
  d_initial: float = 0.1
  seed: int = 0  # projection seed: adapters trained with one seed only mean something with it
  fan_in: int = 0  # Kaiming fan-in of Aᵀ; 0 = this layer's d_in (module docstring)

  def arg_problems(self):
    problems = positive_int("rank", self.rank)
    if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)
            and 0 <= self.seed < 2**32):
      problems.append(f"seed={self.seed!r}; expected an integer in [0, 2**32)")
    if not (isinstance(self.fan_in, int) and not isinstance(self.fan_in, bool) and self.fan_in >= 0):
      problems.append(f"fan_in={self.fan_in!r}; expected 0 (the layer's d_in) or a positive integer")
    if not (isinstance(self.d_initial, (int, float)) and not isinstance(self.d_initial, bool)
            and math.isfinite(self.d_initial)):
      problems.append(f"d_initial={self.d_initial!r}; expected a finite number")
    return problems

  def check(self, shape):
    # The rank may exceed min(d_in, d_out) (the paper uses r = 1024 on 768-wide
    # layers): ΔW's rank is then min(d_in, d_out), and more r adds trained entries in d.
    need_2d("vera", shape)
    for problem in self.arg_problems():  # also for specs that skip config validation
      raise UserError(f"vera: {problem}")

  def wrap_init(self, key, base, shape, dtype, std):
    del key, base, std
    return {"vera_d": jnp.full((self.rank,), self.d_initial, dtype),
            "vera_b": jnp.zeros((shape[1],), dtype)}

  def wrap_apply(self, theta, base_w, rng):
    del rng
    d_in = jax.eval_shape(materialize, base_w).shape[0]  # the base may be a structured kernel
    a, b = projections(self.seed, self.rank, d_in, theta["vera_b"].shape[0], self.fan_in,
                       theta["vera_d"].dtype)
    return VeRAKernel(base_w, a, b, theta["vera_d"], theta["vera_b"])

  def leaf_axes(self, names):
    return {"vera_d": (None,), "vera_b": (names[1],)}

  def wrap_flops(self, theta, base_flops, shape=None):
    # Matmul FLOPs per token, as the rest of the report: (x Aᵀ) and (· Bᵀ).  The
    # r + d_out elementwise scalings are not counted (LoRA's α/r is not either).
    # θ holds no d_in-sized leaf: d_in comes from W's shape, which `Wrapped.flops`
    # passes (without it, from a dense base's 2·d_in·d_out).
    r, n = theta["vera_d"].shape[0], theta["vera_b"].shape[0]
    d_in = shape[0] if shape is not None else base_flops // (2 * n)
    return base_flops + 2 * r * (d_in + n)
