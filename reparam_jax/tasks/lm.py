"""Causal language modelling on a character- or sentencepiece-tokenized text."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reparam_jax.data import lm_text
from reparam_jax.data.pipeline import prepare_once, train_loader
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.tasks.base import Task

Batch = dict[str, Any]


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy (float32) and the summed weights."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  if weights_BxL is None:
    weights_BxL = jnp.ones_like(losses)
  return (losses * weights_BxL).sum(), weights_BxL.sum()


def lm_model(config: ml_collections.ConfigDict, vocab_size: int) -> Transformer:
  """The causal Transformer of a config; vocabulary and length filled in if unset."""
  model_cfg = dict(config.model)
  model_cfg["vocab_size"] = model_cfg.get("vocab_size") or vocab_size
  model_cfg["max_len"] = model_cfg.get("max_len") or config.seq_len
  model_cfg["causal"] = True
  return Transformer(transformer_config(model_cfg))


class LanguageModelTask(Task):
  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.config = config
    self.splits = lm_text.load_splits(config.data)
    self.tokenizer = prepare_once(lm_text.make_tokenizer, config.data, self.splits, workdir,
                                  config.get("init_from", ""))
    self.tokens = {k: self.tokenizer.encode(v) for k, v in self.splits.items()}

  def model(self) -> nn.Module:
    return lm_model(self.config, self.tokenizer.vocab_size)

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) from the config and the tokenizer's vocabulary size alone,
    without reading data (what `python -m reparam_jax.report` sizes)."""
    return lm_model(config, vocab_size), (np.zeros((1, config.seq_len), np.int32),)

  def init_args(self) -> tuple[np.ndarray, ...]:
    """Model inputs of the right shapes, for `init`."""
    return (np.zeros((1, self.config.seq_len), np.int32),)

  def train_iterator(self) -> Iterator[Batch]:
    source = lm_text.WindowSource(self.tokens["train"], self.config.seq_len)
    return train_loader(source, self.config.batch_size, self.config.seed)

  def eval_batches(self) -> Iterable[Batch]:
    return lm_text.eval_chunks(self.tokens["validation"], self.config.seq_len,
                               self.config.eval_batch_size)

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = apply_fn(batch["tokens"][:, :-1], train=train)
    total, count = cross_entropy(out["logits"], batch["tokens"][:, 1:], batch.get("weights"))
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss}

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    out = apply_fn(batch["tokens"][:, :-1], train=False)
    total, count = cross_entropy(out["logits"], batch["tokens"][:, 1:], batch["weights"])
    return {"loss_sum": total, "tokens": count}

  @staticmethod
  def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
    loss = sums["loss_sum"] / max(sums["tokens"], 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}
