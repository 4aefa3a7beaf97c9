"""LoRA (Hu et al. 2021) and its variants: frozen base W₀ plus a trainable low-rank update.

W = W₀ + s · A B, with A: [d_in, r], B: [r, d_out].  (The paper writes
ΔW = B A for a `[d_out, d_in]` weight; our kernels are `[d_in, d_out]`
(`y = x W`), so the same update reads A B here.)  Options, each from a paper:

* `alpha`, `rslora`: the scale s is α/r (Hu et al.) or, with `rslora=True`,
  α/√r (rank-stabilized LoRA, Kalajdzievski 2023: keeps the update's scale
  independent of r, so large ranks keep learning).
* `dropout`: dropout on the adapter's input during training (the `lora_dropout`
  of Hu et al.'s code and PEFT), `x W₀ + s·(drop(x) A) B`; off in evaluation.
  Under DoRA (`lora(...)|magnitude`) it is PEFT's DoRA forward (magnitude.py).
* `init`: how A, B (and the base) start.  The random inits set B = 0, so the
  adapted model starts exactly at the base model, and draw A (`[d_in, r]`,
  the transpose of PEFT's `[r, d_in]` lora_A weight, fan-in d_in):
  - `kaiming` (default): A ~ U(−1/√d_in, 1/√d_in), std 1/√(3·d_in): PEFT's
    default `init_lora_weights=True` and Hu et al.'s loralib, both
    `kaiming_uniform_(a=√5)` (gain √(1/3) times the bound √(3/fan_in));
  - `gaussian`: A ~ N(0, 1/r²), PEFT's `init_lora_weights="gaussian"`;
  - `normal_fan_in`: A ~ N(0, 1/d_in), so x A has entries of x's scale
    (√3 times the default's std);
  the others derive A, B from the weight and change the frozen base:
  - `pissa` (Meng et al. 2024): A, B are the top-r singular directions of W,
    A = U_r √(S_r/s), B = √(S_r/s) V_rᵀ, and the frozen base stores the
    residual W − s·A B: the model starts at W, and training moves its
    principal part;
  - `olora` (Büyükakyüz 2024): the same with the first r columns of a QR
    decomposition of W (PEFT's convention: QR of the `[d_out, d_in]` weight);
  - `loftq` (Li et al. 2023, Algorithm 1): for a lossy base (a quantized
    stage before `lora`, e.g. `q4|lora(init=loftq)`), starting from A B = 0,
    `iters` times: Q = q(W − s·A B), then s·A B = the rank-r SVD of W − Q
    (what that quantization lost).  The base keeps the last Q and the
    adapter the last A, B, so base + adapter is Q plus the best rank-r fit
    of Q's error.  (PEFT's `loftq_init` gives the same Q with unscaled
    factors, B_peft A_peft = SVD_r(W − Q), so its model is this one at
    lora_alpha = r.)
  PiSSA/OLoRA/LoftQ apply when the weight is first represented: converting a
  pretrained checkpoint (`from_dense`, `Reparam.adopt_dense`) or, from
  scratch, the model's own initial weight.

Freezing: W₀ stays in the `params` collection and `trainable()` marks it
False; `reparam.trainable_mask` turns that into an optax mask.  The other
option, a separate non-trainable collection, would split one weight's θ
across two trees that every consumer (sharding, checkpoints, conversion,
`nn.map_variables`-style interception) must then re-join; a mask keeps θ
whole and the optimizer still allocates no state for W₀
(`optax.multi_transform` with `set_to_zero`).  The forward pass also wraps
W₀ in `stop_gradient`, so its d_in×d_out gradient is never computed.

DoRA is `lora(...)|magnitude` (transforms/magnitude.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import (
  Array,
  WrapperTransform,
  fold_key,
  positive_int,
  rate,
  register,
)
from reparam_jax.reparam.kernels import LoRAKernel, materialize
from reparam_jax.reparam.numerics import need_2d
from reparam_jax.reparam.transforms.identity import Identity

RANDOM_INITS = ("kaiming", "gaussian", "normal_fan_in")  # B = 0: the base is W itself
INITS = RANDOM_INITS + ("pissa", "olora", "loftq")


@register
@dataclasses.dataclass(frozen=True)
class LoRA(WrapperTransform):
  """θ = {base: θ of the previous stage (W₀ alone), lora_a: [d_in, r], lora_b: [r, d_out]}."""

  name: ClassVar[str] = "lora"
  needs_matrix: ClassVar[bool] = True
  examples: ClassVar[tuple[str, ...]] = (
      "lora(rank=2)", "lora(rank=2, alpha=4)", "lora(rank=2, rslora=True, dropout=0.1)",
      "lora(rank=2, init=pissa)", "lora(rank=2, init=olora)")
  keys: ClassVar[tuple[str, ...]] = ("lora_a", "lora_b")
  decayed: ClassVar[tuple[str, ...] | None] = ("lora_a", "lora_b")
  # No slots: reparameterizing A, B (e.g. Bayesian adapters) would need the
  # slot machinery to see through the wrapper's `base`; not supported yet.
  rank: int = 8
  alpha: float = 8.0
  rslora: bool = False
  dropout: float = 0.0
  init: str = "kaiming"
  iters: int = 1  # LoftQ's alternations

  @property
  def keeps_base(self) -> bool:
    """Whether the frozen base is the weight itself (a random init), so A, B apply to the
    pretrained model as they are (PEFT export); PiSSA/OLoRA/LoftQ store a modified base."""
    return self.init in RANDOM_INITS

  @property
  def scale(self) -> float:
    return float(self.alpha) / (math.sqrt(self.rank) if self.rslora else self.rank)

  def arg_problems(self):
    problems = positive_int("rank", self.rank) + rate("dropout", self.dropout)
    problems += positive_int("iters", self.iters)
    if self.init not in INITS:
      problems.append(f"init={self.init!r}; expected one of {', '.join(INITS)}")
    return problems

  def check(self, shape):
    need_2d("lora", shape)
    if not 1 <= self.rank <= min(shape):
      raise UserError(f"lora: rank must be in [1, {min(shape)}] for a {tuple(shape)} weight, "
                      f"got {self.rank}")
    for problem in self.arg_problems():  # also for specs that skip config validation
      raise UserError(f"lora: {problem}")

  def wrap_init(self, key, base, shape, dtype, std):
    m, n = shape
    # PiSSA/OLoRA/LoftQ derive A from a weight; with none to derive it from (`init`
    # without a sample, a null adapter whose B = 0 makes A moot) A is the default draw.
    init = self.init if self.keeps_base else "kaiming"
    return {"lora_a": random_a(init, key, (m, self.rank), dtype),
            "lora_b": jnp.zeros((self.rank, n), dtype)}  # B = 0 makes ΔW = 0 exactly

  def split(self, inner, w, key):
    if self.keeps_base:
      return super().split(inner, w, key)
    w32 = w.astype(jnp.float32)
    if self.init == "loftq":
      if isinstance(inner, Identity):
        raise UserError("lora(init=loftq) needs a lossy (quantized) stage before it, e.g. "
                        "q4|lora(init=loftq); for an exact base use init=pissa")
      # Algorithm 1: Q_t = q(W − s·A_{t−1} B_{t−1}), s·A_t B_t = SVD_r(W − Q_t); the result
      # is (Q_T, A_T, B_T), the pair whose error the last SVD fitted (no further q).
      a = jnp.zeros((w.shape[0], self.rank), jnp.float32)
      b = jnp.zeros((self.rank, w.shape[1]), jnp.float32)
      for _ in range(self.iters):
        base = inner.from_dense((w32 - self.scale * a @ b).astype(w.dtype), fold_key(key, 0))
        lost = w32 - materialize(inner.apply(base)).astype(jnp.float32)
        a, b = principal_factors(lost, self.rank, self.scale)
    else:
      factors = principal_factors if self.init == "pissa" else qr_factors
      a, b = factors(w32, self.rank, self.scale)
      base = inner.from_dense((w32 - self.scale * a @ b).astype(w.dtype), fold_key(key, 0))
    return base, {"lora_a": a.astype(w.dtype), "lora_b": b.astype(w.dtype)}

  def split_init(self, inner, key, w_init):
    if self.keeps_base:
      return super().split_init(inner, key, w_init)
    return self.split(inner, w_init, key)

  def wrap_apply(self, theta, base_w, rng):
    return LoRAKernel(base_w, theta["lora_a"], theta["lora_b"], self.scale, self.dropout, rng)

  def leaf_axes(self, names):
    return {"lora_a": (names[0], None), "lora_b": (None, names[1])}

  def wrap_flops(self, theta, base_flops, shape=None):
    (m, r), n = theta["lora_a"].shape, theta["lora_b"].shape[1]
    return base_flops + 2 * r * (m + n)


def random_a(init: str, key: Array, shape_MxR: tuple[int, int], dtype: Any) -> Array:
  """A `[d_in, r]` drawn by the random `init` (see the module docstring; fan-in = d_in)."""
  d_in, rank = shape_MxR
  if init == "kaiming":  # kaiming_uniform_(a=√5): bound = √(1/3)·√(3/d_in) = 1/√d_in
    bound = 1.0 / math.sqrt(d_in)
    return jax.random.uniform(key, shape_MxR, dtype, -bound, bound)
  if init == "gaussian":
    return jax.random.normal(key, shape_MxR, dtype) / jnp.asarray(rank, dtype)
  if init == "normal_fan_in":
    return jax.random.normal(key, shape_MxR, dtype) / jnp.sqrt(d_in).astype(dtype)
  raise UserError(f"lora: init={init!r} draws no random A; expected one of "
                  f"{', '.join(RANDOM_INITS)}")


def principal_factors(w_MxN: Array, rank: int, scale: float) -> tuple[Array, Array]:
  """PiSSA's A = U_r √(S_r/s), B = √(S_r/s) V_rᵀ: s·A B is W's best rank-r approximation."""
  u, sv, vt = jnp.linalg.svd(w_MxN, full_matrices=False)
  root = jnp.sqrt(sv[:rank] / scale)
  return u[:, :rank] * root, root[:, None] * vt[:rank]


def qr_factors(w_MxN: Array, rank: int, scale: float) -> tuple[Array, Array]:
  """OLoRA's factors in PEFT's convention: QR of the [d_out, d_in] weight Wᵀ = Q R gives
  lora_A = R_r, lora_B = Q_r (so here A = R_rᵀ, B = Q_rᵀ), and s·A B leaves the base."""
  del scale  # OLoRA does not rescale the factors; the base keeps W − s·A B
  q, r = jnp.linalg.qr(w_MxN.T)
  return r[:rank].T, q[:, :rank].T


def merge(lora: LoRA, base_w: Array, adapter: dict[str, Array]) -> Array:
  """W₀ + (α/r) A B: the dense weight to deploy without the adapter."""
  return materialize(base_w) + lora.scale * (adapter["lora_a"] @ adapter["lora_b"])


def unmerge(lora: LoRA, merged_w: Array, adapter: dict[str, Array]) -> dict[str, Any]:
  """Inverse of `merge`: θ = {base: W − (α/r) A B, lora_a: A, lora_b: B}."""
  base = merged_w - lora.scale * (adapter["lora_a"] @ adapter["lora_b"])
  return {"base": base, "lora_a": adapter["lora_a"], "lora_b": adapter["lora_b"]}
