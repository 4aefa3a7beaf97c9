"""Sequence (or sentence-pair) classification by fine-tuning an encoder.

Data: SST-2 or another built-in dataset (`data.name`), or any labelled source
(`data.source` and `data.eval_source`: TSV, JSON Lines, TFDS; GLUE's tasks in
configs/glue/); a sentence pair is packed `[CLS] a [SEP] b [SEP]` with token
types 0 and 1.

Model: the encoder, pooled (`encoder.pooling`), then the seeds' head
LayerNorm → Dropout → Linear; loss: cross-entropy (optionally label-smoothed)
plus `classify.contrastive_weight` · InfoNCE between two dropout views.

Start from a pre-training run (`--config.init_from=<mlm workdir>`), a
`convert_hf` output or a Hugging Face BERT folder: the backbone comes from
its checkpoint, the classifier head is fresh, and the tokenizer is that
run's or model's (saved into this workdir).  A pretrained model also gives
the architecture (hf/pretrained.py; configs/sst2/minilm_*.py).

Eval: the confusion matrix summed over the dev split gives exact accuracy
and per-class precision/recall/F1 (`eval/accuracy`, `eval/f1_macro`,
`eval/f1/positive`, ...).  Each eval rewrites `report.txt` (a
classification_report-style table) and `confusion_matrix.png` in the workdir.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reparam_jax.data.buckets import bucketed_loader
from reparam_jax.data.classification import load_classification
from reparam_jax.data.pipeline import prepare_once, train_loader
from reparam_jax.data.sst2 import (
  ClassificationSource,
  encode_all,
  encoder_tokenizer,
  padded_eval_batches,
  specials,
)
from reparam_jax.errors import UserError
from reparam_jax.objectives.classification import classification_loss, confusion_counts
from reparam_jax.objectives.contrastive import info_nce
from reparam_jax.tasks import classify_report
from reparam_jax.tasks.base import Task
from reparam_jax.tasks.encoder import (
  buckets_for,
  classifier_init_args,
  encoder_model,
  init_from_tokenizer,
  section,
  two_views,
)

Batch = dict[str, Any]


class ClassificationTask(Task):
  heads = ("classifier",)

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.config, self.workdir = config, workdir
    self.cfg = section(config, "classify")
    # data.source/eval_source, or data.name: sst2, shakespeare_order (data/classification.py).
    self.names, data = load_classification(config.data)
    self.dataset = config.data.get("source") or config.data.name
    if section(config, "encoder").num_classes != len(self.names):
      raise UserError(f"encoder.num_classes={config.encoder.num_classes} but {self.dataset} "
                      f"has {len(self.names)} classes ({', '.join(self.names[:8])}); set "
                      f"--config.encoder.num_classes={len(self.names)}")
    texts, _, pairs = data["train"]
    self.tokenizer = prepare_once(encoder_tokenizer, config.data, texts + (pairs or []), workdir,
                                  self.tokenizer_sources())
    sp = specials(self.tokenizer)
    self.sources = {
        split: ClassificationSource(encode_all(self.tokenizer, texts), labels, config.seq_len, sp,
                                    encode_all(self.tokenizer, pairs) if pairs else None)
        for split, (texts, labels, pairs) in data.items()}

  @classmethod
  def holdout_unread(cls, config: ml_collections.ConfigDict) -> str | None:
    return None  # load_classification carves it, whatever the source

  def tokenizer_sources(self) -> tuple[str, ...]:
    """Runs whose tokenizer this one must reuse (their token ids are in the weights)."""
    return init_from_tokenizer(self.config)

  def model(self) -> nn.Module:
    return encoder_model(self.config.model, self.config.encoder, self.tokenizer.vocab_size,
                         self.config.seq_len, self.heads)

  def init_args(self) -> tuple[np.ndarray, ...]:
    return classifier_init_args(self.config.seq_len)

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) without reading data (see `LanguageModelTask`)."""
    return (encoder_model(config.model, config.encoder, vocab_size, config.seq_len, cls.heads),
            classifier_init_args(config.seq_len))

  def train_iterator(self) -> Iterator[Batch]:
    source, buckets = self.sources["train"], buckets_for(self.config)
    if buckets:
      return bucketed_loader(source.lengths(), buckets, self.config.batch_size,
                             self.config.seed, source.batch)
    return train_loader(source, self.config.batch_size, self.config.seed)

  def tokens_in(self, host_batch: Batch) -> int:
    """Token positions of the global batch: length buckets pad to less than seq_len."""
    rows, length = host_batch["ids"].shape
    return rows * length * jax.process_count()

  def eval_batches(self) -> Iterable[Batch]:
    source = self.sources["validation"]
    return padded_eval_batches(source.__getitem__, len(source), self.config.eval_batch_size)

  @staticmethod
  def inputs(batch: Batch) -> list[jax.Array]:
    """The encoder's arguments; token types only for sentence pairs (None adds type 0)."""
    return [batch["ids"], batch["padding_mask"], batch.get("token_types")]

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    inputs = self.inputs(batch)
    if self.cfg.contrastive_weight and train:
      out, view2 = two_views(apply_fn, inputs, train)
    else:
      out, view2 = apply_fn(*inputs, train=train), None
    l_task, metrics = classification_loss(out["logits"], batch["label"][:, 0],
                                          label_smoothing=self.cfg.label_smoothing)
    total = l_task
    metrics["task_loss"] = l_task
    if view2 is not None:
      l_cl, m = info_nce(out["sentence"], view2["sentence"], self.cfg.contrastive_temperature)
      total += self.cfg.contrastive_weight * l_cl
      metrics.update(m, contrastive_loss=l_cl)
    metrics["loss"] = total
    return total, metrics

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    out = apply_fn(*self.inputs(batch), train=False)
    return self.classification_sums(out["logits"], batch)

  def eval_examples(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    """Per-example outcomes (`weights` 0 marks padding): what a paired bootstrap resamples."""
    out = apply_fn(*self.inputs(batch), train=False)
    logits, labels = out["logits"].astype(jnp.float32), batch["label"][:, 0]
    return {"correct": (jnp.argmax(logits, -1) == labels).astype(jnp.int8),
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            "weights": batch["weights"][:, 0]}

  @staticmethod
  def classification_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    w, labels = batch["weights"][:, 0], batch["label"][:, 0]
    loss, _ = classification_loss(logits, labels, w)
    cm = confusion_counts(logits, labels, w)
    sums = {f"cm_{i}_{j}": cm[i, j] for i in range(cm.shape[0]) for j in range(cm.shape[1])}
    return dict(sums, loss_sum=loss * w.sum(), examples=w.sum())

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    C = len(self.names)
    cm = np.array([[sums[f"cm_{i}_{j}"] for j in range(C)] for i in range(C)])
    out = {"loss": sums["loss_sum"] / max(sums["examples"], 1.0),
           **classify_report.summary(cm, self.names)}
    if self.workdir and jax.process_index() == 0:
      report = classify_report.format_report(cm, self.names)
      with open(os.path.join(self.workdir, "report.txt"), "w", encoding="utf-8") as f:
        f.write(report)
      classify_report.plot_confusion(cm, self.names,
                                     os.path.join(self.workdir, "confusion_matrix.png"),
                                     title=f"{self.dataset} dev, accuracy {out['accuracy']:.3f}")
      print(report, flush=True)
    return out
