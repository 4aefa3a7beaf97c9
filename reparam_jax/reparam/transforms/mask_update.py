"""Mask updates: scores → exact top-k masks, inside the jitted train step.

`update_extra(params, grads, extra, step, plan)` is the train step's hook
(called after the gradients, before the optimizer's result is kept).  For
every `mask` stage it

1. accumulates movement scores, S ← S − W ⊙ ∂L/∂W′ with W′ = M ⊙ W the masked
   weight (Sanh et al. 2020, their straight-through estimator; `soft_movement`
   also shrinks them, S ← sign(S)·max(|S| − λ, 0), the proximal step of an L1
   penalty λ‖S‖₁ on the scores);
2. on the schedule's update steps (`jax.lax.cond`, so other steps pay nothing),
   recomputes the mask to the schedule's sparsity.

Pruning pools.  Entries compete for the kept slots within a pool:
  * unstructured, scope 'layer': one pool per weight; scope 'global': one pool
    for all weights whose mask spec is equal;
  * N:M: every group of M consecutive inputs keeps its N best (no pool);
  * group (heads, neurons): group scores are summed over the weights of one
    module (e.g. q, k, v columns and out rows of head h in `block_0/attn`),
    and groups compete within the module ('layer') or across modules ('global').
The number pruned in a pool is k = ⌊s·n + ½⌋ of its n entries (or groups), exact:
a stable argsort breaks ties by position.

Scores: magnitude |w| (masked entries score −1, so a growing target never
revives them); movement S; threshold keeps |w| > τ; soft movement keeps S > τ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import meta

from reparam_jax.pytree.paths import subtree
from reparam_jax.reparam.rules import Plan, map_theta
from reparam_jax.reparam.state import (
  AUX_COLLECTION,
  get_in,
  has_state,
  set_in,
  state_stages,
  weight_leaf,
)
from reparam_jax.reparam.transforms.mask import Mask, parse_nm
from reparam_jax.reparam.transforms.mask_schedule import is_update_step, target_sparsity

PyTree = Any


@dataclasses.dataclass
class Entry:
  """One mask stage of one weight."""

  path: str
  kp: tuple
  stage: Mask
  w: jax.Array
  aux: dict
  g: jax.Array | None = None

  @property
  def module(self) -> str:
    return "/".join([self.path.rsplit("/", 2)[0], *self.kp])


def collect(plan: Plan, params: PyTree, masks: PyTree, grads: PyTree | None = None
            ) -> list[Entry]:
  """Every mask stage with its weight, aux state and (optionally) gradient."""
  entries: list[Entry] = []
  params, masks = meta.unbox(params), meta.unbox(masks)

  def visit(path, rule, theta):
    if rule is None or not has_state(rule.node):
      return theta
    aux_w = subtree(masks, path)
    g_w = subtree(grads, path) if grads is not None else None
    for stage, kp in state_stages(rule.node, theta):
      if aux_w is None:
        continue
      g = None
      if g_w is not None:  # movement scores need ∂L/∂W′, which the probe's gradient is
        g_stage = get_in(g_w, kp)
        g = g_stage["probe"] if "probe" in g_stage else weight_leaf(g_stage)
      entries.append(Entry(path, kp, stage, weight_leaf(get_in(theta, kp)),
                           dict(get_in(aux_w, kp)), g))
    return theta

  map_theta(plan, params, visit)
  return entries


def _keep_all_but_lowest(scores: jax.Array, k: jax.Array) -> jax.Array:
  """Bool mask (flat) keeping all but the k lowest scores; exactly k are dropped."""
  n = scores.size
  order = jnp.argsort(scores.ravel(), stable=True)
  return jnp.zeros((n,), jnp.bool_).at[order].set(jnp.arange(n) >= k)


def _n_pruned(s: jax.Array, n: int) -> jax.Array:
  return jnp.floor(s * n + 0.5).astype(jnp.int32)


def _score(e: Entry) -> jax.Array:
  if e.stage.method in ("movement", "soft_movement"):
    return e.aux["scores"]
  return jnp.where(e.aux["mask"], jnp.abs(e.w).astype(jnp.float32), -1.0)


def _group_scores(e: Entry, s: jax.Array) -> jax.Array:
  """[groups] sums of `s` (squared magnitudes or movement scores) per group."""
  st = e.stage
  if e.stage.method == "magnitude":
    s = jnp.where(e.aux["mask"], jnp.square(e.w.astype(jnp.float32)), -1.0)
  m, n = s.shape
  if st.axis == 1:
    return s.reshape(m, st.groups, n // st.groups).sum(axis=(0, 2))
  return s.reshape(st.groups, m // st.groups, n).sum(axis=(1, 2))


def _expand_groups(e: Entry, keep_G: jax.Array) -> jax.Array:
  st, (m, n) = e.stage, e.w.shape
  if st.axis == 1:
    return jnp.broadcast_to(jnp.repeat(keep_G, n // st.groups)[None, :], (m, n))
  return jnp.broadcast_to(jnp.repeat(keep_G, m // st.groups)[:, None], (m, n))


def _nm_mask(e: Entry, nm: tuple[int, int]) -> jax.Array:
  n_keep, m = nm
  s = _score(e)
  d_in, d_out = s.shape
  s = s.reshape(d_in // m, m, d_out)
  ranks = jnp.argsort(jnp.argsort(s, axis=1, stable=True), axis=1)
  return (ranks >= m - n_keep).reshape(d_in, d_out)


def _pools(entries: list[Entry]) -> dict[Any, list[int]]:
  pools: dict[Any, list[int]] = {}
  for i, e in enumerate(entries):
    st = e.stage
    if st.method in ("threshold", "soft_movement", "fixed") or parse_nm(st.pattern):
      key = ("own", i)
    elif st.pattern == "group":
      key = ("group", dataclasses.replace(st, axis=0),
             e.module if st.scope == "layer" else None)
    else:
      key = ("flat", st, i if st.scope == "layer" else None)
    pools.setdefault(key, []).append(i)
  return pools


def _pool_masks(entries: list[Entry], idx: list[int], step: jax.Array) -> list[jax.Array]:
  """New masks for one pool at sparsity s_t."""
  members = [entries[i] for i in idx]
  st = members[0].stage
  nm = parse_nm(st.pattern)
  if st.method == "fixed":
    return [e.aux["mask"] for e in members]
  if st.method == "threshold":
    return [e.aux["mask"] & (jnp.abs(e.w) > st.threshold) for e in members]
  if st.method == "soft_movement":
    return [e.aux["scores"] > st.threshold for e in members]
  if nm is not None:
    return [_nm_mask(e, nm) for e in members]
  s_t = target_sparsity(st, step)
  if st.pattern == "group":
    modules: dict[str, list[Entry]] = {}
    for e in members:
      modules.setdefault(e.module, []).append(e)
    vecs = [sum(_group_scores(e, _score(e)) for e in es) for es in modules.values()]
    flat = jnp.concatenate(vecs)
    keep = _keep_all_but_lowest(flat, _n_pruned(s_t, flat.size))
    out_by_module, off = {}, 0
    for name, v in zip(modules, vecs):
      out_by_module[name] = keep[off:off + v.size]
      off += v.size
    return [_expand_groups(e, out_by_module[e.module]) for e in members]
  scores = [_score(e) for e in members]
  flat = jnp.concatenate([s.ravel() for s in scores])
  keep = _keep_all_but_lowest(flat, _n_pruned(s_t, flat.size))
  out, off = [], 0
  for s in scores:
    out.append(keep[off:off + s.size].reshape(s.shape))
    off += s.size
  return out


def new_masks(entries: list[Entry], step: jax.Array, force: bool = False) -> list[jax.Array]:
  """Each entry's mask after this step's scheduled update (or unchanged)."""
  result: list[Any] = [e.aux["mask"] for e in entries]
  for idx in _pools(entries).values():
    st = entries[idx[0]].stage
    old = [entries[i].aux["mask"] for i in idx]
    if force:
      masks = _pool_masks(entries, idx, step)
    else:
      masks = jax.lax.cond(is_update_step(st, step),
                           lambda: _pool_masks(entries, idx, step), lambda: old)
    for i, m in zip(idx, masks):
      result[i] = m
  return result


def _accumulate_scores(e: Entry) -> None:
  """S ← S − W ⊙ ∂L/∂W′ (Sanh et al. 2020): `e.g` is the gradient w.r.t. the masked
  weight W′, nonzero at pruned entries too, so they keep moving and can return."""
  if "scores" not in e.aux or e.g is None:
    return
  s = e.aux["scores"] - e.w.astype(jnp.float32) * e.g.astype(jnp.float32)
  if e.stage.method == "soft_movement" and e.stage.l1:
    # Proximal step of λ‖S‖₁ (soft thresholding): shrinks towards 0 without overshooting it.
    s = jnp.sign(s) * jnp.maximum(jnp.abs(s) - e.stage.l1, 0.0)
  e.aux["scores"] = s


def write_back(masks: PyTree, entries: list[Entry]) -> PyTree:
  """`masks` with each entry's aux state replaced."""
  masks = meta.unbox(masks)
  out = masks
  for e in entries:
    path = tuple(e.path.split("/")) + tuple(e.kp)
    out = set_in(out, path, {**get_in(out, path), **e.aux})
  return out


def sparsity_metrics(entries: list[Entry]) -> dict[str, jax.Array]:
  pruned = sum((e.aux["mask"].size - jnp.sum(e.aux["mask"])) for e in entries)
  total = sum(e.aux["mask"].size for e in entries)
  return {"sparsity": jnp.asarray(pruned, jnp.float32) / max(total, 1)}


def update_extra(params: PyTree, grads: PyTree, extra: PyTree, step: jax.Array,
                 plan: Plan) -> tuple[PyTree, dict[str, jax.Array]]:
  """The trainer hook: (extra with updated masks/scores, {'sparsity': …})."""
  masks = extra.get(AUX_COLLECTION) if extra else None
  if not masks:
    return extra, {}
  entries = collect(plan, params, masks, grads)
  if not entries:
    return extra, {}
  for e in entries:
    _accumulate_scores(e)
  for e, m in zip(entries, new_masks(entries, step)):
    e.aux["mask"] = m
  return {**extra, AUX_COLLECTION: write_back(masks, entries)}, sparsity_metrics(entries)


def prune_now(params: PyTree, masks: PyTree, plan: Plan, step: int | None = None
              ) -> PyTree:
  """Host-side one-shot: every mask set to its spec's target (at `step`, default end_step)."""
  entries = collect(plan, params, masks)
  if step is None:
    step = max([e.stage.end_step for e in entries], default=0)
  for e, m in zip(entries, new_masks(entries, jnp.asarray(step, jnp.int32), force=True)):
    e.aux["mask"] = m
  return write_back(masks, entries)
