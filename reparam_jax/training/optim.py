"""The optimizer: AdamW, linear warm-up + cosine decay, clipping, freezing.

`make_optimizer` returns an optax transformation.  Without frozen leaves and
with `optimizer.fused` (the default) it is a `FusedAdamW`: the same optax
chain (its `init` and `update`, hence the same state and checkpoints), plus
`apply`, which does clipping, AdamW, the parameter update and the train
step's finiteness guard with the same float32 operations in fewer passes over
memory (docs/performance.md, "Fine-tuning the pretrained MiniLM").
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax._src import numerics

from reparam_jax.errors import UserError
from reparam_jax.regularizers.decay import decay_mask_fn
from reparam_jax.training import reliability

PyTree = Any


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr`, then decay to `end_lr` at `num_steps`: cosine, or
  linear (`optimizer.schedule='linear'`, BERT's and `transformers`' fine-tuning default)."""
  warmup = min(opt.warmup_steps, num_steps)
  kind = opt.get("schedule", "cosine")
  if kind == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, opt.lr, warmup),
         optax.linear_schedule(opt.lr, opt.end_lr, max(num_steps - warmup, 1))], [warmup])
  if kind != "cosine":
    raise UserError(f"optimizer.schedule={kind!r}: use 'cosine' or 'linear'")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=opt.end_lr)


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int, trainable: Any = None,
                   default_decay: Callable[[Any], Any] | None = None
                   ) -> optax.GradientTransformation:
  """AdamW with clipping.  `trainable` (a bool pytree) freezes the False leaves;
  `default_decay(params)` is the decay mask where no `decay_rules` applies
  (`Reparam.decay_mask`; None: every ndim ≥ 2 leaf).

  A `FusedAdamW` when nothing is frozen and `opt.fused` (default True).
  """
  schedule = learning_rate_schedule(opt, num_steps)
  decay_mask = decay_mask_fn(opt.get("decay_rules", ()), default_decay)
  chain = []
  if opt.clip_norm:
    chain.append(optax.clip_by_global_norm(opt.clip_norm))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  # An all-True mask (e.g. variational or spherical θ, every leaf trained) freezes nothing.
  nothing_frozen = trainable is None or all(
      isinstance(t, bool) and t for t in jax.tree.leaves(trainable))
  if nothing_frozen and opt.get("fused", True):
    return FusedAdamW(tx.init, tx.update, _fused_apply(tx, opt, schedule, decay_mask))
  return freeze(tx, trainable)


class FusedAdamW(NamedTuple):
  """`clip_by_global_norm` → `adamw` → `apply_updates` in fewer passes over memory.

  `init` and `update` are the optax chain's (state layout and checkpoints are
  the same).  `apply(grads, opt_state, params, grad_norm, ok=None)` returns
  `(params, opt_state, ok)`: the chain's new params and state, computed with
  the same float32 operations in the same order (bit-identical).  `grad_norm`
  is `optax.tree.norm(grads)`.  With `ok` (a scalar bool: the step's loss and
  gradient are finite), the result is the old params and state unless `ok`
  and every new param is finite, and `ok` comes back ANDed with that: the
  train step's guard (reliability.keep_if) without extra passes over the
  state.
  """

  init: Callable[[PyTree], PyTree]
  update: Callable[..., tuple[PyTree, PyTree]]
  apply: Callable[..., tuple[PyTree, PyTree, jax.Array | None]]


def _fused_apply(tx: optax.GradientTransformation, opt: ml_collections.ConfigDict,
                 schedule: optax.Schedule, decay_mask: Callable[[PyTree], PyTree]
                 ) -> Callable[..., tuple[PyTree, PyTree, jax.Array | None]]:
  """`FusedAdamW.apply` for `tx` = chain([clip_by_global_norm,] adamw) built from `opt`.

  Why it is faster: XLA:CPU fuses each output (m, v, params) into its own
  loop, and an expensive op (the clipping divide, the sqrt) used by two of
  them is written to memory once and read back instead of being recomputed;
  optax's separate tree maps add more such intermediates, and the guard's
  `where` after the update reads and writes params, m and v once more.  Here
  every loop reads only the inputs it needs: m' from (g, m), v' from (g, v),
  θ' from (θ, m', v'), and the guard is one read-only pass computing θ'
  again to test it.  `optimization_barrier` gives each consumer its own copy
  of an input so that XLA cannot merge the duplicated expressions back into
  one shared intermediate.
  """
  b1, b2, eps, weight_decay, clip_norm = opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.clip_norm

  def apply(grads: PyTree, opt_state: PyTree, params: PyTree, grad_norm: jax.Array,
            ok: jax.Array | None = None) -> tuple[PyTree, PyTree, jax.Array | None]:
    if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves((grads, params))):
      return _unfused(tx, grads, opt_state, params, grad_norm, ok)
    adam, decay_state, lr_state = opt_state[-1]
    if clip_norm:
      trigger = jnp.squeeze(grad_norm < clip_norm)
    count = numerics.safe_increment(adam.count)
    lr_count = numerics.safe_increment(lr_state.count)
    bias1, bias2 = 1 - b1 ** count, 1 - b2 ** count
    step_size = -1 * schedule(lr_state.count)

    # Each function below is the optax expression it replaces, op for op.
    def clipped(g):  # clip_by_global_norm
      if not clip_norm:
        return g
      return jax.lax.select(trigger, g, (g / grad_norm.astype(g.dtype)) * clip_norm)

    def moments(g, m, v):  # scale_by_adam's update_moment(_per_elem_norm)
      m_new = (1 - b1) * clipped(g) + b1 * m
      v_new = (1 - b2) * (clipped(jax.lax.optimization_barrier(g)) ** 2) + b2 * v
      return m_new.astype(m.dtype), v_new.astype(v.dtype)

    def new_param(p, m, v, decay):  # bias correction, adam, add_decayed_weights, lr, apply
      u = (m / bias1.astype(m.dtype)) / (jnp.sqrt(v / bias2.astype(v.dtype) + 0.0) + eps)
      if decay:
        u = u + weight_decay * p
      u = jnp.array(step_size, dtype=u.dtype) * u
      return jnp.asarray(p + u).astype(p.dtype)

    leaves_g, treedef = jax.tree.flatten(grads)
    leaves_m, leaves_v, leaves_p, leaves_d = (
        treedef.flatten_up_to(t) for t in (adam.mu, adam.nu, params, decay_mask(params)))
    if ok is not None:
      finite = []
      for leaf, decay in zip(zip(leaves_g, leaves_m, leaves_v, leaves_p), leaves_d):
        g, m, v, p = jax.lax.optimization_barrier(leaf)
        finite.append(jnp.isfinite(new_param(p, *moments(g, m, v), decay)).all())
      ok = jnp.logical_and(ok, jnp.all(jnp.stack(finite)))
    new_p, new_m, new_v = [], [], []
    for g, m, v, p, decay in zip(leaves_g, leaves_m, leaves_v, leaves_p, leaves_d):
      m_new, v_new = moments(g, m, v)
      if ok is not None:
        # θ' reads the kept m and v: they are m' and v' whenever θ' is kept.
        m_new, v_new = jnp.where(ok, m_new, m), jnp.where(ok, v_new, v)
        new_p.append(jnp.where(ok, new_param(p, m_new, v_new, decay), p))
      else:
        new_p.append(new_param(p, m_new, v_new, decay))
      new_m.append(m_new)
      new_v.append(v_new)
    if ok is not None:
      count = jnp.where(ok, count, adam.count)
      lr_count = jnp.where(ok, lr_count, lr_state.count)
    adam = adam._replace(count=count, mu=treedef.unflatten(new_m), nu=treedef.unflatten(new_v))
    new_state = (*opt_state[:-1], (adam, decay_state, lr_state._replace(count=lr_count)))
    return treedef.unflatten(new_p), new_state, ok

  return apply


def _unfused(tx: optax.GradientTransformation, grads: PyTree, opt_state: PyTree,
             params: PyTree, grad_norm: jax.Array, ok: jax.Array | None
             ) -> tuple[PyTree, PyTree, jax.Array | None]:
  """`FusedAdamW.apply` the plain way (optax's update, then the guard)."""
  updates, new_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  if ok is None:
    return new_params, new_state, None
  ok = jnp.logical_and(ok, reliability.all_finite(new_params))
  new_params, new_state = reliability.keep_if(ok, (new_params, new_state), (params, opt_state))
  return new_params, new_state, ok


def freeze(tx: optax.GradientTransformation, trainable: Any
           ) -> optax.GradientTransformation:
  """`tx` on the True leaves of `trainable`; the others get zero updates and no state.

  `trainable` is a bool pytree (a reparameterization's or fine-tuning's mask;
  `freezing.combine` ANDs them), or None for everything trainable.
  """
  if trainable is None:
    return tx
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
