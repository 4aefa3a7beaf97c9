"""optim.FusedAdamW: the optax chain's update in fewer passes, value for value.

The fused `apply` must give exactly the params and optimizer state of
clip_by_global_norm → adamw → apply_updates (the trainer used those before),
and its guard must keep the old state exactly when `reliability.keep_if` did.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reparam_jax.config.base import base_config
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.training import optim, reliability, sharding, steps


def _opt(**overrides):
  opt = base_config().optimizer
  opt.lr, opt.end_lr, opt.warmup_steps, opt.weight_decay, opt.b2 = 1e-2, 0.0, 2, 0.1, 0.999
  for key, value in overrides.items():
    opt[key] = value
  return opt


def _tree(seed: int, scale: float):
  keys = jax.random.split(jax.random.key(seed), 3)
  return {"dense": {"kernel": scale * jax.random.normal(keys[0], (5, 7)),
                    "bias": scale * jax.random.normal(keys[1], (7,))},
          "embed": scale * jax.random.normal(keys[2], (11, 3))}


def _optax_step(tx, grads, state, params, ok=None):
  """What the train step did before FusedAdamW: optax's update, then the guard."""
  updates, new_state = tx.update(grads, state, params)
  new_params = optax.apply_updates(params, updates)
  if ok is None:
    return new_params, new_state
  ok = jnp.logical_and(ok, reliability.all_finite(new_params))
  return reliability.keep_if(ok, (new_params, new_state), (params, state))


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("overrides", [
    {},                                        # clipping on; large gradients are clipped
    {"clip_norm": 0.0},                        # no clipping transform in the chain
    {"schedule": "linear", "decay_rules": ((r"embed", False),)},
])
@pytest.mark.parametrize("guarded", [False, True])
def test_fused_apply_is_bit_identical_to_the_optax_chain(overrides, guarded):
  opt = _opt(**overrides)
  tx = optim.make_optimizer(opt, 10)
  assert isinstance(tx, optim.FusedAdamW)
  params = _tree(0, 1.0)
  fused_state = optax_state = tx.init(params)
  fused_params = optax_params = params

  @jax.jit
  def both(fused_params, fused_state, optax_params, optax_state, grads):
    ok = jnp.bool_(True) if guarded else None
    new_fused = tx.apply(grads, fused_state, fused_params, optax.tree.norm(grads), ok)
    return new_fused, _optax_step(tx, grads, optax_state, optax_params, ok)

  # Steps 1-2 in warm-up, 3-4 after; gradient norms below and above clip_norm=1.
  for i, scale in enumerate([0.01, 3.0, 0.05, 10.0]):
    (fused_params, fused_state, ok), (optax_params, optax_state) = both(
        fused_params, fused_state, optax_params, optax_state, _tree(i + 1, scale))
    assert (ok is None) == (not guarded) and (ok is None or bool(ok))
    _assert_identical((fused_params, fused_state), (optax_params, optax_state))
  assert int(fused_state[-1][0].count) == 4
  assert not np.array_equal(fused_params["embed"], params["embed"])


@pytest.mark.parametrize("bad", ["grad", "param"])
def test_the_guard_keeps_the_old_state_exactly_when_keep_if_did(bad):
  tx = optim.make_optimizer(_opt(), 10)
  params = _tree(0, 1.0)
  state = tx.init(params)
  params, state, _ = jax.jit(tx.apply)(_tree(1, 0.1), state, params,
                                       optax.tree.norm(_tree(1, 0.1)), jnp.bool_(True))
  grads = _tree(2, 0.1)
  if bad == "grad":  # the step's own check (loss, grad norm) says no
    ok_before = jnp.bool_(False)
  else:  # a param already infinite stays infinite: only the new-param check catches it
    ok_before = jnp.bool_(True)
    params = dict(params, embed=params["embed"].at[3, 1].set(jnp.inf))
  fused = jax.jit(tx.apply)(grads, state, params, optax.tree.norm(grads), ok_before)
  old_way = _optax_step(tx, grads, state, params, ok_before)
  assert not bool(fused[2])
  _assert_identical(fused[:2], old_way)
  _assert_identical(fused[:2], (params, state))


def test_frozen_leaves_or_fused_false_give_the_plain_optax_chain():
  params = _tree(0, 1.0)
  trainable = jax.tree.map(lambda _: True, params) | {"embed": False}
  assert not isinstance(optim.make_optimizer(_opt(), 10, trainable), optim.FusedAdamW)
  assert not isinstance(optim.make_optimizer(_opt(fused=False), 10), optim.FusedAdamW)


def _train(fused: bool, nan_at_step: int = 0, reparam_rules: tuple = ()):
  """Three steps of the trainer's jitted train step on a tiny LM; the params after each."""
  from bench.lm_step import SyntheticLMTask, quickstart_config  # noqa: PLC0415
  config = quickstart_config(**{"optimizer.fused": fused, "model.num_layers": 1,
                                "model.embed_dim": 16, "model.mlp_dim": 32, "model.num_heads": 2,
                                "seq_len": 8, "batch_size": 4, "optimizer.lr": 1e-2,
                                "optimizer.warmup_steps": 1, "reparam.rules": reparam_rules})
  task = SyntheticLMTask(config, vocab_size=65)
  rp = Reparam.from_config(config.reparam)
  model = rp.wrap(task.model())
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = sharding.rules_tuple(config.axis_rules)
  state, _, tx = steps.create_train_state(
      steps.init_variables_fn(model, task.init_args()),
      lambda p: optim.make_optimizer(config.optimizer, 10, rp.trainable_mask(p),
                                     default_decay=rp.decay_mask),
      mesh, rules, jax.random.key(0))
  assert isinstance(tx, optim.FusedAdamW) == fused
  step = jax.jit(steps.make_train_step(
      model, task, tx, rp, optim.learning_rate_schedule(config.optimizer, 10), 1,
      jax.random.key(1), nan_at_step=nan_at_step), donate_argnums=(0,))
  history = []
  for i in range(3):
    state, metrics = step(state, task.batch(i))
    history.append((jax.tree.map(np.asarray, (state.params, state.opt_state)),
                    float(metrics["nonfinite"])))
  return history


def test_the_train_step_is_unchanged_by_fusing():
  for (fused, fused_bad), (plain, plain_bad) in zip(_train(True), _train(False)):
    assert fused_bad == plain_bad == 0.0
    for x, y in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_a_non_finite_step_keeps_params_and_state_with_fusing():
  history = _train(True, nan_at_step=2)
  assert [bad for _, bad in history] == [0.0, 1.0, 0.0]
  _assert_identical(history[1][0], history[0][0])
  assert not np.array_equal(history[2][0][0]["embed"]["token"]["embedding"],
                            history[1][0][0]["embed"]["token"]["embedding"])


# Variational has no post-update hook (the optimizer's pass guards the step);
# hypersphere re-projects after the update (the guard runs after it); both train every θ leaf.
@pytest.mark.parametrize("spec", ["variational", "hypersphere(learn_scale=True)"])
def test_a_reparameterized_train_step_is_unchanged_by_fusing(spec):
  reparam_rules = ((r"block_\d+/(attn|mlp)/\w+/kernel", spec),)
  for (fused, fused_bad), (plain, plain_bad) in zip(
      _train(True, reparam_rules=reparam_rules), _train(False, reparam_rules=reparam_rules)):
    assert fused_bad == plain_bad == 0.0
    for x, y in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", ["variational", "hypersphere(learn_scale=True)"])
def test_a_reparameterized_non_finite_step_keeps_params_and_state(spec):
  history = _train(True, nan_at_step=2,
                   reparam_rules=((r"block_\d+/(attn|mlp)/\w+/kernel", spec),))
  assert [bad for _, bad in history] == [0.0, 1.0, 0.0]
  _assert_identical(history[1][0], history[0][0])


def test_only_a_transform_with_a_post_update_hook_keeps_the_separate_guard():
  from reparam_jax.training.steps import _moves_params_after_update  # noqa: PLC0415
  dense = {"block_0": {"mlp": {"fc_in": {"kernel": jnp.ones((4, 4))}}}}
  for spec, moves in [("variational", False), ("spherical", False), ("hypersphere", True)]:
    rp = Reparam.from_config({"rules": ((r".*kernel", spec),)})
    assert _moves_params_after_update(rp, rp.from_dense(dense)) == moves, spec
  assert not _moves_params_after_update(Reparam.from_config(None), dense)
