"""Tiny encoders and a few-step optimiser loop shared by the encoder-task tests."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import optax

from reparam_jax.models import transformer_config
from reparam_jax.models.heads import EncoderWithHeads

VOCAB = 40


def tiny_encoder(heads=("classifier",), embed_dim=16, layers=1, pooling="mean",
                 dropout=0.0, num_classes=2) -> EncoderWithHeads:
  cfg = transformer_config(dict(
      vocab_size=VOCAB, num_layers=layers, num_heads=2, embed_dim=embed_dim,
      mlp_dim=2 * embed_dim, max_len=12, causal=False, pre_norm=False, type_vocab_size=2,
      embed_norm=True, pooler=True, residual_dropout=dropout, embed_dropout=dropout))
  return EncoderWithHeads(cfg, heads=heads, num_classes=num_classes, pooling=pooling,
                          classifier_dropout=dropout)


def train_few_steps(loss_fn: Callable, params, steps: int = 25, lr: float = 3e-3):
  """Adam on `loss_fn(params, rng)`; returns the loss before and after."""
  tx = optax.adam(lr)
  opt = tx.init(params)
  grad = jax.jit(jax.value_and_grad(loss_fn))
  first = None
  for i in range(steps):
    loss, g = grad(params, jax.random.key(i))
    first = float(loss) if first is None else first
    updates, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, updates)
  return first, float(grad(params, jax.random.key(10_000))[0])


def init_params(model: nn.Module, *args):
  return nn.meta.unbox(model.init(jax.random.key(0), *args, train=False))["params"]
