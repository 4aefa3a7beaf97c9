"""Encoder pre-training: masked LM, optionally with next-sentence prediction and InfoNCE.

  loss = mlm_weight · L_MLM + nsp_weight · L_NSP (with mlm.nsp) + contrastive_weight · L_CL

L_CL is SimCSE's InfoNCE between two dropout views of each (corrupted)
sequence's pooled representation; with `mlm_weight=0` and no NSP it is
unsupervised SimCSE alone.  Every term is logged (`train/mlm_loss`, ...).
Eval: masked-LM loss and accuracy on the validation split with masks fixed
by (seed, example index), so every evaluation scores the same positions.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from reparam_jax.data.buckets import bucketed_loader
from reparam_jax.data.mlm_corpus import MlmExamples, load_documents
from reparam_jax.data.pipeline import prepare_once, train_loader
from reparam_jax.data.sst2 import encode_all, encoder_tokenizer, padded_eval_batches, specials
from reparam_jax.objectives.contrastive import info_nce
from reparam_jax.objectives.mlm import mlm_loss, mlm_sums
from reparam_jax.objectives.nsp import nsp_loss
from reparam_jax.tasks.base import Task
from reparam_jax.tasks.encoder import (
  buckets_for,
  encoder_model,
  init_from_tokenizer,
  section,
  two_views,
)

Batch = dict[str, Any]


class MaskedLanguageModelTask(Task):
  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.config = config
    self.cfg = section(config, "mlm")
    docs = load_documents(config.data)
    self.tokenizer = prepare_once(encoder_tokenizer, config.data,
                                  [s for d in docs["train"] for s in d], workdir,
                                  init_from_tokenizer(config, required=False))
    sp = specials(self.tokenizer)
    self.examples = {
        split: MlmExamples([encode_all(self.tokenizer, d) for d in documents], config.seq_len, sp,
                           nsp=self.cfg.nsp, rate=self.cfg.mask_rate)
        for split, documents in docs.items()}
    self.heads = ("mlm", "nsp") if self.cfg.nsp else ("mlm",)
    self.mlm_positions = self.examples["train"].max_predictions  # P: where the MLM head runs

  def model(self) -> nn.Module:
    return encoder_model(self.config.model, self.config.encoder, self.tokenizer.vocab_size,
                         self.config.seq_len, self.heads)

  def init_args(self) -> tuple[np.ndarray, ...]:
    L, P = self.config.seq_len, self.examples["train"].max_predictions
    return (np.zeros((1, L), np.int32), np.ones((1, L), bool), np.zeros((1, L), np.int32),
            np.zeros((1, P), np.int32))

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) without reading data (see `LanguageModelTask`); the MLM
    head's positions P come from the data, and any P gives the same parameters."""
    L = config.seq_len
    heads = ("mlm", "nsp") if section(config, "mlm").nsp else ("mlm",)
    model = encoder_model(config.model, config.encoder, vocab_size, L, heads)
    return model, (np.zeros((1, L), np.int32), np.ones((1, L), bool), np.zeros((1, L), np.int32),
                   np.zeros((1, 1), np.int32))

  def train_iterator(self) -> Iterator[Batch]:
    examples, buckets = self.examples["train"], buckets_for(self.config)
    if buckets and not self.cfg.nsp:  # an NSP pair's length is only known once drawn
      return bucketed_loader(examples.lengths(), buckets, self.config.batch_size,
                             self.config.seed, examples.batch)
    return train_loader(range(len(examples)), self.config.batch_size, self.config.seed,
                        random_transform=examples)

  def eval_batches(self) -> Iterable[Batch]:
    examples = self.examples["validation"]
    seed = self.config.seed
    return padded_eval_batches(lambda i: examples(i, np.random.default_rng((seed, i))),
                               len(examples), self.config.eval_batch_size)

  @staticmethod
  def _inputs(batch: Batch) -> list[Any]:
    return [batch["ids"], batch["padding_mask"], batch["token_types"], batch["mlm_positions"]]

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.cfg
    if cfg.contrastive_weight and train:
      out, view2 = two_views(apply_fn, self._inputs(batch), train)
    else:
      out, view2 = apply_fn(*self._inputs(batch), train=train), None
    l_mlm, metrics = mlm_loss(out["mlm_logits"], batch["mlm_targets"], batch["mlm_weights"])
    total = cfg.mlm_weight * l_mlm
    metrics["mlm_loss"] = l_mlm
    if cfg.nsp:
      l_nsp, m = nsp_loss(out["nsp_logits"], batch["nsp_label"][:, 0])
      total += cfg.nsp_weight * l_nsp
      metrics.update(m, nsp_loss=l_nsp)
    if view2 is not None:
      l_cl, m = info_nce(out["sentence"], view2["sentence"], cfg.contrastive_temperature)
      total += cfg.contrastive_weight * l_cl
      metrics.update(m, contrastive_loss=l_cl)
    metrics["loss"] = total
    return total, metrics

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    out = apply_fn(*self._inputs(batch), train=False)
    w = batch["weights"][:, 0]
    sums = mlm_sums(out["mlm_logits"], batch["mlm_targets"], batch["mlm_weights"] * w[:, None])
    if self.cfg.nsp:
      l_nsp, m = nsp_loss(out["nsp_logits"], batch["nsp_label"][:, 0], w)
      sums.update(nsp_loss_sum=l_nsp * w.sum(), nsp_correct=m["nsp_accuracy"] * w.sum(),
                  examples=w.sum())
    return sums

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    mlm = sums["mlm_loss_sum"] / max(sums["mlm_count"], 1.0)
    out = {"mlm_loss": mlm, "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0),
           "mlm_perplexity": float(np.exp(min(mlm, 50.0)))}
    loss = self.cfg.mlm_weight * mlm
    if self.cfg.nsp:
      out["nsp_loss"] = sums["nsp_loss_sum"] / max(sums["examples"], 1.0)
      out["nsp_accuracy"] = sums["nsp_correct"] / max(sums["examples"], 1.0)
      loss += self.cfg.nsp_weight * out["nsp_loss"]
    out["loss"] = loss
    return out
