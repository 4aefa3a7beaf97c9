"""Training tasks: what the model is, what it reads, and what it is scored on.

A task is a class with this interface (see `lm.py` for the reference one):

  model() -> nn.Module                    the Flax model (unaware of reparameterization)
  init_args() -> tuple of arrays          model inputs of the right shapes, for `init`
  train_iterator() -> iterator            per-host numpy batches (checkpointable grain iterator)
  eval_batches() -> iterable              per-host numpy batches covering the eval split
  loss(apply_fn, batch, train) -> (loss, metrics)
                                          `apply_fn(batch-inputs…, train=…)` runs the model
  eval_sums(apply_fn, batch) -> dict      sums over the batch (jitted, summed over batches)
  eval_metrics(sums) -> dict              final eval metrics from the sums

and two classmethods that need no data (for `python -m reparam_jax.report`):

  inherited_tokenizer(config) -> str      the folder whose tokenizer the task takes, or ''
  model_from_config(config, vocab_size) -> (model, init_args)
                                          `model()` and `init_args()` from the config alone
"""

from __future__ import annotations

from typing import Any

import ml_collections

from reparam_jax.errors import UserError
from reparam_jax.tasks import classify, distill, lm, mlm, seq2seq, text_vae

REGISTRY = {"lm": lm.LanguageModelTask,
            "text_vae": text_vae.TextVAETask,  # sentence VAE on line-level text
            # Encoder tasks (MLM pre-training, fine-tuning, distillation); tasks/encoder.py.
            "mlm": mlm.MaskedLanguageModelTask, "classify": classify.ClassificationTask,
            "distill": distill.DistillationTask,
            # Encoder–decoder: T5 span corruption (models/seq2seq.py).
            "seq2seq": seq2seq.Seq2SeqTask}


def task_class(config: ml_collections.ConfigDict | dict[str, Any]) -> Any:
  """The class of the task a config (or a run's config.json, as a dict) names; its
  classmethods and CAUSAL_LM / ENCODER_DECODER need no data."""
  name = config.get("task", "lm")
  if name not in REGISTRY:
    raise UserError(f"unknown task {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def make_task(config: ml_collections.ConfigDict, workdir: str | None) -> Any:
  """The task `config.task` names, built from the config (and the run folder, for some)."""
  return task_class(config)(config, workdir)
