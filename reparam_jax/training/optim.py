"""The optimizer: AdamW, linear warm-up + cosine decay, clipping, freezing."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from reparam_jax.errors import UserError
from reparam_jax.regularizers.decay import decay_mask_fn


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
  (`Reparam.decay_mask`; None: every ndim ≥ 2 leaf)."""
  chain = []
  if opt.clip_norm:
    chain.append(optax.clip_by_global_norm(opt.clip_norm))
  chain.append(optax.adamw(learning_rate_schedule(opt, num_steps), b1=opt.b1, b2=opt.b2,
                           eps=opt.eps, weight_decay=opt.weight_decay,
                           mask=decay_mask_fn(opt.get("decay_rules", ()), default_decay)))
  return freeze(optax.chain(*chain), trainable)


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
