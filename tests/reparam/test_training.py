"""A few hundred steps of plain optax training decrease the loss under every transform."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from reparam_jax import reparam
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.reparam import Reparam
from reparam_jax.training import optim
from tests.reparam.specs import COMPOSITIONS, EXAMPLES, trainable


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="out")(jnp.tanh(nn.Dense(16, name="hidden")(x)))


def _train(model, rc, batch_fn, loss_fn, steps, lr, x0):
  wrapped = reparam.wrap(model, rc)
  params = nn.meta.unbox(wrapped.init(jax.random.key(0), x0)["params"])
  tx = optim.freeze(optax.adam(lr), Reparam.from_config(rc).trainable_mask(params))
  opt = tx.init(params)

  def total(p, batch, k, step):
    out = wrapped.apply({"params": p}, batch[0], rngs={"reparam": k})
    return loss_fn(out, batch) + Reparam.from_config(rc).penalty(p, step)[0]

  @jax.jit
  def step(params, opt, batch, k, i):
    loss, g = jax.value_and_grad(total)(params, batch, k, i)
    upd, opt = tx.update(g, opt, params)
    return Reparam.from_config(rc).post_update(optax.apply_updates(params, upd)), opt, loss

  losses = []
  for i in range(steps):
    params, opt, loss = step(params, opt, batch_fn(i), jax.random.key(i), i)
    losses.append(float(loss))
  return losses


SPECS = trainable(EXAMPLES + COMPOSITIONS)  # every registered transform (tests/reparam/specs.py)


@pytest.mark.parametrize("spec", SPECS)
def test_loss_decreases_stock_mlp(spec):
  w_true = jax.random.normal(jax.random.key(42), (4, 2))

  def batch(i):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(7), i), (32, 4))
    return x, jnp.sin(x @ w_true)

  rc = ml_collections.ConfigDict(dict(rules=((r"(hidden|out)/kernel", spec),)))
  losses = _train(MLP(), rc, batch, lambda y, b: jnp.mean((y - b[1]) ** 2), 300, 2e-2,
                  jnp.zeros((1, 4)))
  first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
  assert last < 0.5 * first, (spec, first, last)


def test_loss_decreases_transformer_lowrank_lora():
  cfg = TransformerConfig(vocab_size=16, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=8)
  seq = (jnp.arange(9)[None] + jnp.arange(4)[:, None]) % 16  # a learnable shifting pattern

  def lm_loss(out, b):
    return optax.softmax_cross_entropy_with_integer_labels(out["logits"], b[1]).mean()

  for spec in ("lowrank(rank=4)", "lora(rank=4, alpha=8)"):
    rc = ml_collections.ConfigDict(dict(rules=((r"block_0/(attn|mlp)/\w+/kernel", spec),)))
    losses = _train(Transformer(cfg), rc, lambda i: (seq[:, :-1], seq[:, 1:]), lm_loss, 150, 1e-2,
                    seq[:, :-1])
    assert losses[-1] < 0.5 * losses[0], (spec, losses[0], losses[-1])
