"""Sparsity masks: `W = where(M, w, 0)` with M in the non-trainable `'masks'` collection.

θ in `params` is `{"w": w}`; the mask (and, for movement pruning, the scores)
live in the variable collection `'masks'` at the same path and key structure,
boxed with the weight's logical names so they shard like it.  The split keeps
everything the optimizer sees in `params` (no optimizer state, no weight
decay and no gradient for M), while the interceptor joins the two trees
before `apply` (`state.join_state`), so a mask composes like any other stage:

  mask(...)               W = M ⊙ w
  lowrank(rank=r)|mask    both factors masked: W = (M_u ⊙ u)(M_v ⊙ v)ᵀ
  mask|quant(bits=8)      W = M ⊙ Q(w)      (quant reparameterizes the slot `w`)
  quant(bits=8)|mask      W = Q(M ⊙ w)
  mask|lora               frozen masked base plus a dense adapter

The mask declares its state as `aux_keys` / `aux_init` (reparam/state.py
finds such stages inside composed nodes).  Without the state (a params-only
tree, e.g. in `penalty` or a report) `apply` uses no mask.

When and how M changes is set by the spec's fields and done by
`transforms/mask_update.py` inside the jitted train step (see
docs/compression.md): one-shot, gradual (Zhu & Gupta's cubic schedule),
magnitude / movement / soft movement / threshold scores, unstructured, N:M or
groups (attention heads, MLP neurons), per layer or global.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.reparam.base import Transform, rate, register
from reparam_jax.reparam.numerics import shape_of

METHODS = ("magnitude", "movement", "soft_movement", "threshold", "fixed")
SCOPES = ("layer", "global")


def parse_nm(pattern: str) -> tuple[int, int] | None:
  """'2:4' → (2, 4); other patterns → None."""
  if ":" not in pattern:
    return None
  try:
    n, m = (int(x) for x in pattern.split(":"))
  except ValueError:
    raise UserError(f"mask(pattern={pattern!r}): N:M patterns look like '2:4'") from None
  if not 0 < n < m:
    raise UserError(f"mask(pattern={pattern!r}): need 0 < N < M")
  return n, m


@register
@dataclasses.dataclass(frozen=True)
class Mask(Transform):
  """θ = {w[, probe]}; aux (collection 'masks') = {mask: bool like w[, scores: f32 like w]}.

  Movement pruning (Sanh et al. 2020) scores an entry by −W·∂L/∂W′, the gradient
  with respect to the *masked* weight W′ = M ⊙ W (their straight-through
  estimator through the top-k mask), so pruned entries keep receiving signal
  and can come back.  The stored weight's gradient is M ⊙ ∂L/∂W′, zero where
  pruned; the movement methods therefore add `probe`, a frozen array of zeros,
  to W′ (no change to the value): its gradient is ∂L/∂W′ itself, which the
  score update reads.  The weight itself still gets M ⊙ ∂L/∂W′, as in the paper.
  """

  name: ClassVar[str] = "mask"
  examples: ClassVar[tuple[str, ...]] = (
      "mask(sparsity=0.5)",
      "mask(method=movement, sparsity=0.5, begin_step=1, end_step=3, every=1)")
  slots: ClassVar[tuple[str, ...]] = ("w",)
  decayed: ClassVar[tuple[str, ...] | None] = ("w",)
  method: str = "magnitude"      # how the kept entries are scored (METHODS)
  sparsity: float = 0.5          # final target s_f (fraction of entries, or of groups, pruned)
  initial_sparsity: float = 0.0  # s_i at begin_step
  begin_step: int = 0            # t0: first mask update
  end_step: int = 0              # t0 + nΔt: last update (== begin_step: one-shot)
  every: int = 100               # Δt between updates
  scope: str = "layer"           # rank within each weight ('layer') or across all ('global')
  pattern: str = "unstructured"  # 'unstructured', 'N:M' (e.g. '2:4'), or 'group'
  groups: int = 0                # pattern='group': number of groups along `axis` (heads, neurons)
  axis: int = 1                  # pattern='group': 1 = columns (q/k/v, fc_in), 0 = rows (out, fc_out)
  threshold: float = 0.0         # method='threshold' (|w|) or 'soft_movement' (scores)
  l1: float = 0.0                # method='soft_movement': L1 shrinkage of the scores per step

  @property
  def movement(self) -> bool:
    return self.method in ("movement", "soft_movement")

  @property
  def keys(self) -> tuple[str, ...]:  # type: ignore[override]
    return ("w", "probe") if self.movement else ("w",)

  @property
  def aux_keys(self) -> tuple[str, ...]:
    return ("mask", "scores") if self.movement else ("mask",)

  def arg_problems(self):
    return rate("sparsity", self.sparsity) + rate("initial_sparsity", self.initial_sparsity)

  def check(self, shape):
    if self.method not in METHODS:
      raise UserError(f"mask(method={self.method!r}): choose one of {', '.join(METHODS)}")
    if self.scope not in SCOPES:
      raise UserError(f"mask(scope={self.scope!r}): choose 'layer' or 'global'")
    if not 0.0 <= self.initial_sparsity <= self.sparsity <= 1.0:
      raise UserError(f"mask: need 0 ≤ initial_sparsity ≤ sparsity ≤ 1, got "
                      f"{self.initial_sparsity} and {self.sparsity}")
    if self.end_step < self.begin_step or self.every < 1:
      raise UserError("mask: need end_step ≥ begin_step and every ≥ 1")
    nm = parse_nm(self.pattern)
    if nm is not None:
      if len(shape) != 2 or shape[0] % nm[1]:
        raise UserError(f"mask(pattern={self.pattern!r}) needs a 2-D kernel whose input size is "
                        f"a multiple of {nm[1]}, got shape {tuple(shape)}")
    elif self.pattern == "group":
      if len(shape) != 2 or self.axis not in (0, 1):
        raise UserError("mask(pattern='group') needs a 2-D kernel and axis 0 (rows) or 1 (columns)")
      if self.groups < 1 or shape[self.axis] % self.groups:
        raise UserError(f"mask(groups={self.groups}) must divide axis {self.axis} of shape "
                        f"{tuple(shape)}")
    elif self.pattern != "unstructured":
      raise UserError(f"mask(pattern={self.pattern!r}): use 'unstructured', 'N:M' or 'group'")

  def _with_probe(self, w: Any) -> dict[str, Any]:
    return {"w": w, "probe": jnp.zeros(shape_of(w), w.dtype)} if self.movement else {"w": w}

  def init_from(self, key, w_init):
    return self._with_probe(w_init)  # a mask starts all-ones: the wrapped model equals the bare one

  def init(self, key, shape, dtype, std):
    return self._with_probe(std * jax.random.normal(key, shape, dtype))

  def from_dense(self, w, key=None):
    return self._with_probe(w)

  def apply(self, theta, rng=None):
    w = theta["w"]
    if "mask" in theta:
      w = jnp.where(theta["mask"], w, jnp.zeros((), jnp.result_type(w)))
    return w + theta["probe"] if "probe" in theta else w

  def trainable(self, theta):
    return {k: k == "w" for k in theta}  # the probe stays zero

  def leaf_axes(self, names):
    return {k: names for k in self.keys}

  def dense_shape(self, theta):
    return shape_of(theta["w"])

  def matches(self, theta):
    return (isinstance(theta, Mapping) and set(theta) == set(self.keys)
            and not isinstance(theta["w"], Mapping))

  # --- aux state -------------------------------------------------------------
  def aux_init(self, w: Any) -> dict[str, jax.Array]:
    out = {"mask": jnp.ones(w.shape, jnp.bool_)}
    if "scores" in self.aux_keys:
      out["scores"] = jnp.zeros(w.shape, jnp.float32)
    return out
