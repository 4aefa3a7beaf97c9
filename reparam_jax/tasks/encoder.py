"""What the encoder tasks (`mlm`, `classify`, `distill`) share: config fields, model, data.

`encoder_defaults(c)` adds the fields these tasks read to a base config (the
configs under configs/sst2 call it), so every knob has a default in one place:

  model.*                BERT-style encoder shape (post-LN, segment embeddings, pooler)
  encoder.pooling        'cls' (pooler on [CLS]) or 'mean' (masked mean of the last layer)
  encoder.classifier_dropout, encoder.num_classes
  encoder.length_buckets  length-bucketed training batches (data/buckets.py)
  mlm.*                  pre-training objective weights (see tasks/mlm.py)
  classify.*             fine-tuning extras (see tasks/classify.py)
  distill.*              α L_task + β L_KD + γ L_CL + δ L_hidden (see tasks/distill.py)
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from reparam_jax.data.tokenizers import has_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.models import transformer_config
from reparam_jax.models.heads import EncoderWithHeads


def encoder_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.data.name = "sst2"
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 8000
  c.model.pre_norm = False
  c.model.embed_norm = True
  c.model.type_vocab_size = 2
  c.model.pooler = True
  c.model.gelu_approximate = False
  c.model.layer_norm_eps = 1e-12
  c.encoder = ml_collections.ConfigDict(dict(
      pooling="cls", classifier_dropout=0.1, num_classes=2,
      # The seeds' head is LayerNorm → Dropout → Linear; False: Dropout → Linear
      # (BertForSequenceClassification's).
      classifier_norm=True,
      # > 0: a linear projection of the pooled features to this width before
      # the classifier (the seeds' feature-projection fine-tuning head).
      feature_proj_dim=0,
      # Training batches padded only to the smallest of these lengths that fits
      # their bucket (data/buckets.py); () = every batch padded to seq_len.
      length_buckets=()))
  c.mlm = ml_collections.ConfigDict(dict(
      mask_rate=0.15, nsp=False, mlm_weight=1.0, nsp_weight=1.0,
      contrastive_weight=0.0, contrastive_temperature=0.05))
  c.classify = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, contrastive_weight=0.0, contrastive_temperature=0.05))
  c.distill = ml_collections.ConfigDict(dict(
      teacher="", alpha=0.5, beta=0.5, temperature=2.0, gamma=0.0,
      contrastive_temperature=0.05, hidden_weight=0.0))
  return c


def section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A config section the task needs, with a pointer to where it comes from if absent."""
  if name not in config:
    raise UserError(f"config has no '{name}' section; encoder configs start from "
                    "reparam_jax.tasks.encoder.encoder_defaults(base_config())")
  return config[name]


def encoder_model(model_cfg: Any, encoder_cfg: Any, vocab_size: int, seq_len: int,
                  heads: Sequence[str]) -> EncoderWithHeads:
  """The non-causal Transformer of a config section, with the task's heads."""
  model_cfg = dict(model_cfg)
  model_cfg["vocab_size"] = model_cfg.get("vocab_size") or vocab_size
  model_cfg["max_len"] = model_cfg.get("max_len") or seq_len
  model_cfg["causal"] = False
  pooling = encoder_cfg["pooling"]
  if pooling not in ("cls", "mean"):
    raise UserError(f"encoder.pooling must be 'cls' or 'mean', got {pooling!r}")
  return EncoderWithHeads(transformer_config(model_cfg), heads=tuple(heads),
                          num_classes=int(encoder_cfg["num_classes"]),
                          classifier_dropout=float(encoder_cfg["classifier_dropout"]),
                          classifier_feature_proj_dim=int(encoder_cfg.get("feature_proj_dim", 0)),
                          classifier_norm=bool(encoder_cfg.get("classifier_norm", True)),
                          pooling=pooling)


def buckets_for(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The configured bucket lengths below seq_len, plus seq_len itself; () if unset."""
  wanted = tuple(int(b) for b in section(config, "encoder").length_buckets)
  if not wanted:
    return ()
  if min(wanted) < 4:
    raise UserError(f"encoder.length_buckets={wanted}: lengths must be ≥ 4")
  return tuple(sorted({b for b in wanted if b < config.seq_len} | {config.seq_len}))


def init_from_tokenizer(config: ml_collections.ConfigDict, required: bool = True
                        ) -> tuple[str, ...]:
  """`(init_from,)` if the run starts from a checkpoint with a tokenizer (a pre-training
  run, a `convert_hf` output, a Hugging Face folder): its token ids are in the weights.
  `required`: a checkpoint without one is an error (else the run fits its own)."""
  init_from = config.get("init_from", "")
  if not init_from or not (required or has_tokenizer(init_from)):
    return ()
  if not has_tokenizer(init_from):
    raise UserError(f"init_from={init_from} has no tokenizer (tokenizer.model, tokenizer.json "
                    "or vocab.txt); start from a pre-training workdir, a convert_hf output or "
                    "a Hugging Face model folder, which carry theirs")
  return (init_from,)


def read_run_config(workdir: str) -> dict[str, Any]:
  """The `config.json` a training run wrote into its workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no config.json; is it a training workdir?")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def classifier_init_args(seq_len: int) -> tuple[np.ndarray, ...]:
  return (np.zeros((1, seq_len), np.int32), np.ones((1, seq_len), bool))


def two_views(apply_fn: Any, inputs: Sequence[Any], train: bool) -> tuple[dict, dict]:
  """The model's outputs for two dropout views of the same batch.

  One forward pass over the batch stacked on itself: each row draws its own
  dropout mask, so the halves differ exactly as two passes would (SimCSE's
  trick), while the trainer's single dropout key per step is respected.
  """
  doubled = [None if x is None else jnp.concatenate([x, x], axis=0) for x in inputs]
  out = apply_fn(*doubled, train=train)
  n = inputs[0].shape[0]
  return ({k: v[:n] for k, v in out.items()}, {k: v[n:] for k, v in out.items()})
