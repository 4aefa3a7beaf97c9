"""Merging LoRA adapters: weighted linear, TIES and DARE, into the base or into a new adapter.

Every method works on each adapted weight's dense update ("task vector")
`ΔW_i = s_i A_i B_i` (s = the LoRA stage's scale at the adapter's rank), so
this file is LoRA-only: a rule whose node is not `<base>|lora(...)` (DoRA's
`lora|magnitude`, VeRA, ...) is a `UserError`.

  linear     Σ w_i ΔW_i
  ties       TIES-merging (Yadav et al. 2023) as PEFT's `ties` computes it:
             trim each ΔW_i to its top `density` fraction by magnitude (per
             weight matrix), elect each entry's sign from the trimmed ΔW_i
             (`majority_sign_method` "total": the sign of their sum;
             "frequency": the sign held by more of them; a tie elects +),
             then average w_i ΔW_i over the i whose entry has the elected
             sign (disjoint mean: Σ w_i ΔW_i / their count)
  dare       DARE (Yu et al. 2024): drop each entry of ΔW_i with probability
             `drop`, rescale the rest by 1/(1 - drop), then Σ w_i ΔW̃_i
  dare_ties  DARE's drop and rescale, then TIES's sign election and disjoint mean

The weights enter after the trim and the sign election, as in PEFT, so a
weight scales an adapter's contribution without changing which entries or
signs survive; this is PEFT's `ties_svd` / `dare_ties_svd` on the dense
ΔW_i (its `ties` combination applies TIES to the A and B factors apart).

`merge_deltas` gives `{weight path: ΔW}`; `merge_into_base` adds it to each
frozen base W₀ and `unmerge_from_base` subtracts it again (exact up to float
rounding for a plain-array base; a structured base such as a quantized one
is re-encoded with its `from_dense`, so there both are approximate).
`merge_to_adapter` gives a new adapter: linear merging concatenates the
ranks (A = [w₁s₁A₁ | w₂s₂A₂]/s, B = [B₁; B₂], exact); any other method, or
linear at a smaller rank, re-factors ΔW by truncated SVD (approximate).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.pytree.paths import set_path, subtree
from reparam_jax.reparam.adapters.single import has_wrapper, insert_adapter, null_adapter
from reparam_jax.reparam.api import Reparam
from reparam_jax.reparam.compose import Wrapped
from reparam_jax.reparam.kernels import materialize
from reparam_jax.reparam.rules import Plan
from reparam_jax.reparam.transforms.identity import Identity

Array = jax.Array
PyTree = Any
METHODS = ("linear", "ties", "dare", "dare_ties")
SIGN_METHODS = ("total", "frequency")


# --- which weights, which LoRA stage -------------------------------------------------------

def lora_stage(rp: Reparam, path: str) -> Any:
  """The LoRA stage adapting the weight at `path`; `UserError` if it is not plain LoRA."""
  rule = rp.plan.match(path)
  node = None if rule is None else rule.node
  if not (isinstance(node, Wrapped) and node.outer.name == "lora" and not has_wrapper(node.inner)):
    spec = "no rule" if rule is None else repr(rule.spec)
    raise UserError(f"cannot merge at {path} ({spec}): merging works on <base>|lora(...) "
                    "adapters only (the update must be s·A·B)")
  return node.outer


def _weights_of(adapter: Mapping[str, Any]) -> list[str]:
  return sorted({p.rsplit("/", 1)[0] for p in adapter})


def check_same_targets(adapters: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
  """The adapted weight paths, shared by all adapters (else a one-line `UserError`)."""
  if not adapters:
    raise UserError("merge needs at least one adapter")
  first = set(adapters[0])
  for name, ad in zip(names[1:], adapters[1:]):
    diff = sorted(first ^ set(ad))
    if diff:
      has = names[0] if diff[0] in first else name
      raise UserError(f"adapters {names[0]!r} and {name!r} target different weights: only "
                      f"{has!r} has {diff[0]} (merge adapters of the same reparam rules)")
  for p in first:
    if not p.endswith(("/lora_a", "/lora_b")):
      raise UserError(f"adapter leaf {p} is not a LoRA factor; merging works on LoRA only")
  return _weights_of(adapters[0])


def _delta(rp: Reparam, path: str, adapter: Mapping[str, Any]) -> Array:
  a = jnp.asarray(adapter[f"{path}/lora_a"], jnp.float32)
  b = jnp.asarray(adapter[f"{path}/lora_b"], jnp.float32)
  lora = dataclasses.replace(lora_stage(rp, path), rank=a.shape[-1])
  return lora.scale * (a @ b)


# --- the merge formulas on dense task vectors ----------------------------------------------

def trim(tau: Array, density: float) -> Array:
  """`tau` with all but its top `density` fraction of entries (by magnitude) set to 0."""
  k = int(density * tau.size)
  if k <= 0:
    return jnp.zeros_like(tau)
  flat = tau.reshape(-1)
  _, keep = jax.lax.top_k(jnp.abs(flat), k)
  return jnp.zeros_like(flat).at[keep].set(flat[keep]).reshape(tau.shape)


def disjoint_mean(taus_NxIxO: Array, weights: Sequence[float],
                  majority_sign_method: str = "total") -> Array:
  """TIES's elect + disjoint merge (PEFT's `calculate_majority_sign_mask` and
  `disjoint_merge`): each entry's sign is elected from the unweighted τ_i ("total":
  their sum, "frequency": their signs' sum; ≥ 0 elects +), and the result is
  Σ w_i τ_i over the i whose τ_i has that sign, divided by their count (at least 1)."""
  signs = jnp.sign(taus_NxIxO)
  votes = taus_NxIxO.sum(0) if majority_sign_method == "total" else signs.sum(0)
  elected = jnp.where(votes >= 0, 1.0, -1.0)
  agree = signs == elected  # a zero (trimmed or dropped) entry never agrees
  w = jnp.asarray(weights, taus_NxIxO.dtype).reshape((-1,) + (1,) * (taus_NxIxO.ndim - 1))
  return jnp.where(agree, w * taus_NxIxO, 0).sum(0) / jnp.maximum(agree.sum(0), 1)


def dare(tau: Array, drop: float, key: Array) -> Array:
  """Drop each entry with probability `drop`, rescale the rest by 1/(1 - drop)."""
  keep = jax.random.bernoulli(key, 1.0 - drop, tau.shape)
  return jnp.where(keep, tau / (1.0 - drop), 0.0)


def combine(taus: Sequence[Array], weights: Sequence[float], method: str, *, density: float,
            drop: float, keys: Sequence[Array] | None,
            majority_sign_method: str = "total") -> Array:
  """One weight's merged update from its task vectors (see the module docstring)."""
  w = [float(x) for x in weights]
  if method == "linear":
    return sum(wi * t for wi, t in zip(w, taus))
  if method == "ties":
    return disjoint_mean(jnp.stack([trim(t, density) for t in taus]), w, majority_sign_method)
  rescaled = [dare(t, drop, k) for t, k in zip(taus, keys)]
  if method == "dare":
    return sum(wi * t for wi, t in zip(w, rescaled))
  return disjoint_mean(jnp.stack(rescaled), w, majority_sign_method)  # dare_ties


def _check_args(method: str, weights: Sequence[float], n: int, density: float, drop: float,
                key: Array | None, majority_sign_method: str = "total") -> None:
  if method not in METHODS:
    raise UserError(f"unknown merge method {method!r}; known: {', '.join(METHODS)}")
  if majority_sign_method not in SIGN_METHODS:
    raise UserError(f"majority_sign_method={majority_sign_method!r}; expected "
                    f"{' or '.join(SIGN_METHODS)}")
  if len(weights) != n:
    raise UserError(f"merge got {n} adapters but {len(weights)} weights; give one weight each")
  if method == "ties" and not 0 < density <= 1:
    raise UserError(f"ties: density={density!r}; expected a fraction in (0, 1]")
  if method.startswith("dare"):
    if not 0 <= drop < 1:
      raise UserError(f"{method}: drop={drop!r}; expected a probability in [0, 1)")
    if key is None:
      raise UserError(f"{method} drops entries at random: pass key=jax.random.key(seed)")


def merge_deltas(rp: Reparam, adapters: Sequence[Mapping[str, Any]], weights: Sequence[float],
                 method: str = "linear", *, density: float = 0.5, drop: float = 0.5,
                 key: Array | None = None, names: Sequence[str] | None = None,
                 majority_sign_method: str = "total") -> dict[str, Array]:
  """`{weight path: merged ΔW}` of LoRA `adapters` (`{leaf path: array}` each).

  DARE's masks are drawn from `key` per (adapter index, weight path), so the
  same arguments give the same deltas (what `unmerge_from_base` needs).
  `majority_sign_method` ("total" or "frequency", PEFT's argument) picks how
  ties / dare_ties elect each entry's sign.
  """
  names = list(names or [f"#{i}" for i in range(len(adapters))])
  _check_args(method, weights, len(adapters), density, drop, key, majority_sign_method)
  out = {}
  for path in check_same_targets(adapters, names):
    taus = [_delta(rp, path, ad) for ad in adapters]
    keys = None
    if key is not None:
      salt = zlib.crc32(path.encode()) & 0x7FFFFFFF
      keys = [jax.random.fold_in(jax.random.fold_in(key, i), salt) for i in range(len(taus))]
    out[path] = combine(taus, weights, method, density=density, drop=drop, keys=keys,
                        majority_sign_method=majority_sign_method)
  return out


# --- into the base -------------------------------------------------------------------------

def _shift_base(params: PyTree, rp: Reparam, deltas: Mapping[str, Array], sign: float) -> PyTree:
  out = jax.tree.map(lambda x: x, params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  for path, delta in deltas.items():
    lora_stage(rp, path)  # UserError unless the weight is <base>|lora(...)
    node = rp.plan.match(path).node
    box = subtree(params, f"{path}/base")
    if box is None:
      raise UserError(f"params have no LoRA θ at {path} (expected {path}/base)")
    base = meta.unbox(box)
    if isinstance(node.inner, Identity) and not isinstance(base, Mapping):
      new = (base.astype(jnp.float32) + sign * delta).astype(base.dtype)
    else:  # a structured base (quantized, ...): re-encode the shifted dense weight
      w = materialize(node.inner.apply(base, None)).astype(jnp.float32)
      new = node.inner.from_dense(w + sign * delta, None)
    if isinstance(box, meta.AxisMetadata):
      new = box.replace_boxed(new)
    elif isinstance(box, Mapping):
      new = jax.tree.map(lambda o, n: o.replace_boxed(n) if isinstance(o, meta.AxisMetadata)
                         else n, box, new, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
    set_path(out, f"{path}/base", new)
  return out


def merge_into_base(params: PyTree, rp: Reparam, deltas: Mapping[str, Array]) -> PyTree:
  """`params` with W₀ ← W₀ + ΔW at each path of `deltas` and the adapter leaves at
  "no change" (LoRA: B = 0), so the model computes the merged weights."""
  return insert_adapter(_shift_base(params, rp, deltas, 1.0), null_adapter(params, rp))


def unmerge_from_base(params: PyTree, rp: Reparam, deltas: Mapping[str, Array]) -> PyTree:
  """Undoes `merge_into_base`: W₀ ← W₀ − ΔW (the adapter leaves are left as they are)."""
  return _shift_base(params, rp, deltas, -1.0)


# --- into a new adapter --------------------------------------------------------------------

def with_rank(rp: Reparam, ranks: Mapping[str, int]) -> Reparam:
  """`rp` with the LoRA stage of the rule of each weight path at the given rank."""
  new_rules = []
  for rule in rp.plan.rules:
    want = {r for p, r in ranks.items() if rp.plan.match(p) is rule}
    if len(want) > 1:
      raise UserError(f"rule {rule.pattern!r} would need LoRA ranks {sorted(want)} at once")
    if want and want != {rule.node.outer.rank}:
      node = Wrapped(dataclasses.replace(rule.node.outer, rank=want.pop()), rule.node.inner)
      rule = dataclasses.replace(rule, spec=node.describe(), node=node)
    new_rules.append(rule)
  return Reparam(Plan(tuple(new_rules), rp.plan.structured))


def _factor(delta: Array, rank: int, scale: float) -> tuple[Array, Array]:
  """A [d_in, rank], B [rank, d_out] with scale·A B the best rank-`rank` approximation."""
  u, s, vt = jnp.linalg.svd(delta, full_matrices=False)
  k = min(rank, s.shape[0])
  root = jnp.sqrt(s[:k] / scale)
  a = jnp.zeros((delta.shape[0], rank)).at[:, :k].set(u[:, :k] * root)
  b = jnp.zeros((rank, delta.shape[1])).at[:k].set(root[:, None] * vt[:k])
  return a, b


def merge_to_adapter(rp: Reparam, adapters: Sequence[Mapping[str, Any]],
                     weights: Sequence[float], method: str = "linear", *,
                     rank: int | None = None, density: float = 0.5, drop: float = 0.5,
                     key: Array | None = None, names: Sequence[str] | None = None,
                     majority_sign_method: str = "total") -> tuple[dict[str, Array], Reparam]:
  """A new adapter merging `adapters`, and the `Reparam` it belongs to (its LoRA rank).

  linear with `rank` None (or ≥ the ranks' sum): the ranks concatenated, exact.
  Otherwise truncated SVD of `merge_deltas` to `rank` (default: the adapters'
  own rank, so the result fits the same model), approximate.
  """
  names = list(names or [f"#{i}" for i in range(len(adapters))])
  _check_args(method, weights, len(adapters), density, drop, key, majority_sign_method)
  paths = check_same_targets(adapters, names)
  out: dict[str, Array] = {}
  ranks: dict[str, int] = {}
  deltas = None
  for path in paths:
    lora = lora_stage(rp, path)
    own = [int(jnp.shape(ad[f"{path}/lora_a"])[-1]) for ad in adapters]
    target = rank if rank is not None else (sum(own) if method == "linear" else max(own))
    dtype = jnp.asarray(adapters[0][f"{path}/lora_a"]).dtype
    scale = dataclasses.replace(lora, rank=target).scale
    if method == "linear" and target >= sum(own):
      a_parts, b_parts = [], []
      for wi, ri, ad in zip(weights, own, adapters):
        si = dataclasses.replace(lora, rank=ri).scale
        a_parts.append(float(wi) * si / scale * jnp.asarray(ad[f"{path}/lora_a"], jnp.float32))
        b_parts.append(jnp.asarray(ad[f"{path}/lora_b"], jnp.float32))
      pad = target - sum(own)
      a = jnp.pad(jnp.concatenate(a_parts, 1), ((0, 0), (0, pad)))
      b = jnp.pad(jnp.concatenate(b_parts, 0), ((0, pad), (0, 0)))
    else:
      if deltas is None:
        deltas = merge_deltas(rp, adapters, weights, method, density=density, drop=drop,
                              key=key, names=names, majority_sign_method=majority_sign_method)
      a, b = _factor(deltas[path], target, scale)
    out[f"{path}/lora_a"], out[f"{path}/lora_b"] = a.astype(dtype), b.astype(dtype)
    ranks[path] = target
  return out, with_rank(rp, ranks)
