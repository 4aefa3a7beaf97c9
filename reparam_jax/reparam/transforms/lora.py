"""LoRA (Hu et al. 2021): frozen base W₀ plus a trainable low-rank update.

W = W₀ + (α/r) · A B, with A: [d_in, r] Gaussian and B: [r, d_out] zero at
init, so the adapted model starts exactly at the base model.  (The paper
writes ΔW = B A for a `[d_out, d_in]` weight; our kernels are `[d_in, d_out]`
(`y = x W`), so the same update reads A B here.)

Freezing: W₀ stays in the `params` collection and `trainable()` marks it
False; `reparam.trainable_mask` turns that into an optax mask.  The other
option, a separate non-trainable collection, would split one weight's θ
across two trees that every consumer (sharding, checkpoints, conversion,
`nn.map_variables`-style interception) must then re-join; a mask keeps θ
whole and the optimizer still allocates no state for W₀
(`optax.multi_transform` with `set_to_zero`).  The forward pass also wraps
W₀ in `stop_gradient`, so its d_in×d_out gradient is never computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Array, WrapperTransform, positive_int, register
from reparam_jax.reparam.kernels import LoRAKernel, materialize
from reparam_jax.reparam.numerics import need_2d


@register
@dataclasses.dataclass(frozen=True)
class LoRA(WrapperTransform):
  """θ = {base: θ of the previous stage (W₀ alone), lora_a: [d_in, r], lora_b: [r, d_out]}."""

  name: ClassVar[str] = "lora"
  examples: ClassVar[tuple[str, ...]] = ("lora(rank=2)", "lora(rank=2, alpha=4)")
  keys: ClassVar[tuple[str, ...]] = ("lora_a", "lora_b")
  decayed: ClassVar[tuple[str, ...] | None] = ("lora_a", "lora_b")
  # No slots: reparameterizing A, B (e.g. Bayesian adapters) would need the
  # slot machinery to see through the wrapper's `base`; not supported yet.
  rank: int = 8
  alpha: float = 8.0

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  def arg_problems(self):
    return positive_int("rank", self.rank)

  def check(self, shape):
    need_2d("lora", shape)
    if not 1 <= self.rank <= min(shape):
      raise UserError(f"lora: rank must be in [1, {min(shape)}] for a {tuple(shape)} weight, "
                      f"got {self.rank}")

  def wrap_init(self, key, base, shape, dtype, std):
    m, n = shape
    # A ~ N(0, 1/d_in): x A has unit-scale entries; B = 0 makes ΔW = 0 exactly.
    a = jax.random.normal(key, (m, self.rank), dtype) / jnp.sqrt(m).astype(dtype)
    return {"lora_a": a, "lora_b": jnp.zeros((self.rank, n), dtype)}

  def wrap_apply(self, theta, base_w, rng):
    return LoRAKernel(base_w, theta["lora_a"], theta["lora_b"], self.scale)

  def leaf_axes(self, names):
    return {"lora_a": (names[0], None), "lora_b": (None, names[1])}

  def wrap_flops(self, theta, base_flops):
    (m, r), n = theta["lora_a"].shape, theta["lora_b"].shape[1]
    return base_flops + 2 * r * (m + n)


def merge(lora: LoRA, base_w: Array, adapter: dict[str, Array]) -> Array:
  """W₀ + (α/r) A B: the dense weight to deploy without the adapter."""
  return materialize(base_w) + lora.scale * (adapter["lora_a"] @ adapter["lora_b"])


def unmerge(lora: LoRA, merged_w: Array, adapter: dict[str, Array]) -> dict[str, Any]:
  """Inverse of `merge`: θ = {base: W − (α/r) A B, lora_a: A, lora_b: B}."""
  base = merged_w - lora.scale * (adapter["lora_a"] @ adapter["lora_b"])
  return {"base": base, "lora_a": adapter["lora_a"], "lora_b": adapter["lora_b"]}
