"""The train state, its sharded creation, and the train and eval steps.

Everything here is a pure function of its arguments, jitted once by the
caller (training/loop.py).  Reparameterization enters only through the
`Reparam` object: the model is wrapped before it gets here, its penalty is
added to the loss, its `post_update` (e.g. projection back to the sphere)
runs after the optimizer and its state update (sparsity masks) after that.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from reparam_jax.reparam import Reparam
from reparam_jax.training import optim, reliability
from reparam_jax.training import sharding as shd

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  extra: PyTree  # non-trainable variable collections (e.g. sparsity masks)


def init_variables_fn(model: nn.Module, init_args: tuple[Any, ...]) -> Callable[[jax.Array], Any]:
  def init(rng: jax.Array) -> Any:
    return model.init({"params": rng}, *init_args, train=False)
  return init


def create_train_state(init_variables: Callable[[jax.Array], Any],
                       make_tx: Callable[[PyTree], optax.GradientTransformation],
                       mesh: Mesh, rules: Any, rng: jax.Array
                       ) -> tuple[TrainState, TrainState, optax.GradientTransformation]:
  """A train state created already sharded: eval_shape → shardings → jit(init).

  No device ever holds more than its shard of the parameters, so models
  larger than one device's memory initialise fine under FSDP.
  Returns (state, its shardings, the optimizer).
  """
  abstract_vars = jax.eval_shape(init_variables, rng)
  var_shardings = shd.logical_to_sharding(abstract_vars, mesh, rules)
  abstract_params = nn.meta.unbox(abstract_vars["params"])
  tx = make_tx(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Optimizer moments mirror the params and take their shardings; counters
  # and other non-param leaves are replicated.  Frozen params (a masked
  # optimizer) leave a `MaskedNode` in the moments; it stays one.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  opt_shardings = optax.tree_map_params(
      tx, lambda p, s: p if masked(p) else s, abstract_opt, var_shardings["params"],
      transform_non_params=lambda _: shd.replicated(mesh), is_leaf=masked)
  state_shardings = TrainState(
      step=shd.replicated(mesh), params=var_shardings["params"], opt_state=opt_shardings,
      extra={k: v for k, v in var_shardings.items() if k != "params"})

  def init_state(rng: jax.Array) -> TrainState:
    variables = nn.meta.unbox(init_variables(rng))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      extra=dict(variables))

  state = jax.jit(init_state, out_shardings=state_shardings)(rng)
  return state, state_shardings, tx


def abstract_like(state: TrainState, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      state, shardings)


LossFn = Callable[[PyTree, PyTree, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]


def make_loss_fn(model: nn.Module, task: Any, rp: Reparam, nan_at_step: int = 0,
                 penalties: Callable[[PyTree], tuple[jax.Array, dict]] | None = None) -> LossFn:
  """What a train step differentiates: `loss_fn(params, extra, batch, rng, step)`.

  Returns `(loss + penalties, metrics)`.

  `nan_at_step` (tests only) makes that 1-based step's loss NaN.
  `penalties(params) -> (total, {name: term})` (config.reg, reparam_jax/regularizers)
  is added to the loss like the reparam penalty; each term is logged as `penalty/<name>`.
  """

  def loss_fn(params: PyTree, extra: PyTree, batch: dict, rng: jax.Array, step: jax.Array):
    dropout_rng, reparam_rng = jax.random.split(rng)

    def apply_fn(*args: Any, train: bool, **kwargs: Any) -> Any:
      rngs = {"dropout": dropout_rng, "reparam": reparam_rng} if train else {}
      return model.apply({"params": params, **extra}, *args, train=train, rngs=rngs, **kwargs)

    loss, metrics = task.loss(apply_fn, batch, train=True)
    if nan_at_step:
      loss = loss * reliability.nan_factor(step, nan_at_step)
    penalty, terms = rp.penalty(params, step)
    if penalties is not None:
      reg_penalty, reg_terms = penalties(params)
      penalty, terms = penalty + reg_penalty, {**terms, **reg_terms}
    metrics = dict(metrics, **{f"penalty/{k}": v for k, v in terms.items()})
    return loss + penalty, metrics

  return loss_fn


def make_train_step(model: nn.Module, task: Any, tx: optax.GradientTransformation,
                    rp: Reparam, schedule: optax.Schedule, grad_accum_steps: int,
                    base_rng: jax.Array, nan_at_step: int = 0,
                    penalties: Callable[[PyTree], tuple[jax.Array, dict]] | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """One optimizer step over a global batch (optionally in micro-batches).

  A step whose loss, gradients or new params are not all finite keeps the
  old params and optimizer state (the step counter still advances) and
  reports `nonfinite=1`; the host decides whether that stops the run.
  `nan_at_step` and `penalties`: see `make_loss_fn`.
  """
  grad_fn = _value_and_grad(make_loss_fn(model, task, rp, nan_at_step, penalties))

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(base_rng, state.step)
    if grad_accum_steps == 1:
      (total, metrics), grads = grad_fn(state.params, state.extra, batch, rng, state.step)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
          batch)

      def accumulate(carry, xs):
        i, mb = xs
        (t, m), g = grad_fn(state.params, state.extra, mb, jax.random.fold_in(rng, i), state.step)
        return jax.tree.map(jnp.add, carry, (t, m, g)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grad_fn, state.params, state.extra, jax.tree.map(lambda x: x[0], micro), rng,
          state.step))
      zeros = (zeros[0][0], zeros[0][1], zeros[1])
      (total, metrics, grads), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
      total, metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps,
                                           (total, metrics, grads))
    grad_norm = optax.tree.norm(grads)
    # Scheduled sparsity-mask / movement-score updates see this step's θ and gradient.
    extra, extra_metrics = rp.update_state(state.params, grads, state.extra, state.step)
    # The finiteness guard is decided on device so a bad step costs no host round-trip.
    if isinstance(tx, optim.FusedAdamW) and not _moves_params_after_update(rp, state.params):
      # No post-update hook: the optimizer's own pass applies the guard to params and state.
      params, opt_state, ok = tx.apply(grads, state.opt_state, state.params, grad_norm,
                                       reliability.all_finite(total, grad_norm))
      extra = reliability.keep_if(ok, extra, state.extra)
    else:
      if isinstance(tx, optim.FusedAdamW):
        params, opt_state, _ = tx.apply(grads, state.opt_state, state.params, grad_norm)
      else:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
      params = rp.post_update(params)
      ok = reliability.all_finite(total, grad_norm, params)
      params, opt_state, extra = reliability.keep_if(ok, (params, opt_state, extra),
                                                     (state.params, state.opt_state, state.extra))
    metrics = dict(metrics, **extra_metrics, total_loss=total, grad_norm=grad_norm,
                   lr=schedule(state.step), nonfinite=1.0 - ok.astype(jnp.float32))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         extra=extra), metrics

  return train_step


def _moves_params_after_update(rp: Reparam, params: PyTree) -> bool:
  """Whether a transform's `post_update` changes θ (e.g. hypersphere's re-projection).

  Decided while tracing: a transform without the hook hands back the very arrays
  it got, and then the optimizer's pass can guard the step itself (any ops traced
  here are unused and dropped by XLA).
  """
  if not rp.active:
    return False
  after = jax.tree.leaves(rp.post_update(params))
  return any(a is not b for a, b in zip(after, jax.tree.leaves(params), strict=True))


def _value_and_grad(loss_fn: LossFn) -> Callable[..., Any]:
  """`jax.value_and_grad(loss_fn, has_aux=True)` over params that may hold integer leaves.

  Integer θ (int8 / packed 4-bit storage of a frozen base, `qweight`, `q4`) has no
  gradient; its gradient is an integer zero of its own shape, which the optimizer's
  mask turns into no update and no state, and which XLA folds away.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True, allow_int=True)

  def fn(params: PyTree, *args: Any) -> Any:
    out, grads = grad_fn(params, *args)
    grads = jax.tree.map(
        lambda g, p: jnp.zeros_like(p) if g.dtype == jax.dtypes.float0 else g, grads, params)
    return out, grads

  return fn


def make_eval_step(model: nn.Module, task: Any, method: str = "eval_sums"
                   ) -> Callable[[TrainState, dict], dict]:
  """The task's `method` (its sums, or `eval_examples`' per-example outcomes) on a batch."""
  def eval_step(state: TrainState, batch: dict) -> dict:
    def apply_fn(*args: Any, train: bool, **kwargs: Any) -> Any:
      return model.apply({"params": state.params, **state.extra}, *args, train=train, **kwargs)
    return getattr(task, method)(apply_fn, batch)
  return eval_step


def count_params(tree: PyTree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
