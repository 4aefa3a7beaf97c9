"""`delta`: a frozen base W₀ plus a full-size trainable difference, W = W₀ + Δ.

Δ starts at 0, so the model starts exactly at the base (a pretrained
checkpoint, through `from_dense`).  What this buys over training W itself is
that Δ *is* the distance from the starting point, so a penalty or decay on
the trainable θ acts toward W₀ rather than toward 0:

- `reg.rules = ((PATHS, "l2(c, on=theta)"),)` is L2-SP (Li et al. 2018,
  "Explicit inductive bias for transfer learning"): c·½‖W − W₀‖²;
- `l1(c, on=theta)` is the L1 form (a sparse difference, as in diff pruning,
  Guo et al. 2021, without its L0 relaxation);
- AdamW's weight decay on Δ (`decayed`) is its decoupled counterpart.

The cost is a second copy of the selected weights (W₀ is stored and not
optimized: no optimizer state) and one add per weight per step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from reparam_jax.reparam.base import WrapperTransform, register
from reparam_jax.reparam.kernels import materialize


@register
@dataclasses.dataclass(frozen=True)
class Delta(WrapperTransform):
  """θ = {base: θ of the previous stage (W₀ alone), delta: Δ of W's shape, 0 at init}."""

  name: ClassVar[str] = "delta"
  examples: ClassVar[tuple[str, ...]] = ("delta",)
  keys: ClassVar[tuple[str, ...]] = ("delta",)
  decayed: ClassVar[tuple[str, ...] | None] = ("delta",)

  def wrap_init(self, key, base, shape, dtype, std):
    del key, base, std
    return {"delta": jnp.zeros(shape, dtype)}

  def wrap_apply(self, theta, base_w, rng):
    del rng
    return materialize(base_w) + theta["delta"]

  def leaf_axes(self, names):
    return {"delta": names}
