"""Causal language modelling: a built-in text (Tiny Shakespeare), or a prepared corpus.

With `data.prepared` (a `python -m reparam_jax.prepare_data` folder) the task
trains on its token shards, packed into rows (`data.packing`, data/corpus.py),
with the folder's tokenizer, and evaluates on `data.eval_prepared`'s first
`data.eval_batches` rows, concatenated in file order (the same rows at every
evaluation).  With `data.source` (and `data.eval_source`) alone, it first
tokenizes them into the workdir the same way (`corpus.prepare_in_run`: for
small corpora).  With `data.response_field` set, `data.source` and
`data.eval_source` are instruction records instead (data/instructions.py):
one example a row (training rows packed with `data.packing=first_fit`), the
loss on the response only.  Otherwise, on the text
of `data.name`.

`generations(params)` is the greedy continuation of each of
`config.sample.prompts` (an instruction run's in its prompt template): the
trainer logs them before the first step and after the last.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reparam_jax.data import corpus, instructions, lm_text
from reparam_jax.data.pipeline import host_slice, prepare_once, train_loader
from reparam_jax.data.tokenizers import document_boundaries, open_tokenizer
from reparam_jax.errors import UserError
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


def packed_inputs(batch: Batch) -> dict[str, jax.Array]:
  """The model's segment ids and positions of a first-fit packed row's inputs (none if unpacked)."""
  if "segment_ids" not in batch:
    return {}
  return {"segment_ids_BxL": batch["segment_ids"][:, :-1],
          "positions_BxL": batch["positions"][:, :-1]}


def target_weights(batch: Batch) -> jax.Array | None:
  """1 where a target is predicted from its own document: not padding, not a document's
  first token (whose input is the previous document's last); times the batch's own
  `weights` where it has them (packed instruction rows: 0 on the prompts)."""
  if "segment_ids" not in batch:
    return batch.get("weights")
  seg = batch["segment_ids"]
  own = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32)
  return own * batch["weights"] if "weights" in batch else own


class LanguageModelTask(Task):
  CAUSAL_LM = True

  @classmethod
  def holdout_unread(cls, config: ml_collections.ConfigDict) -> str | None:
    return lm_text.holdout_unread(config.data)

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.config = config
    self.shards = None
    self.rows = None  # instruction runs: {"train": Rows, "validation": Rows}
    self.format = instructions.InstructionFormat.from_config(config.data)
    if self.format is not None:
      self._read_instructions(workdir)
      return
    folders, self.eval_folder = corpus.run_folders(config, workdir)
    if folders:
      self.mixture = corpus.open_folders(folders)
      self.shards = self.mixture[0][0]
      self.tokenizer = self.shards.tokenizer()
      if workdir and jax.process_index() == 0:
        self.tokenizer.save(workdir)  # what `sample` decodes with
      return
    self.splits = lm_text.load_splits(config.data)
    self.tokenizer = prepare_once(lm_text.make_tokenizer, config.data, self.splits, workdir,
                                  config.get("init_from", ""))
    self.tokens = {k: self.tokenizer.encode(v) for k, v in self.splits.items()}

  def _read_instructions(self, workdir: str | None) -> None:
    """Instruction records of data.source / data.eval_source as rows, with init_from's
    tokenizer (or data.tokenizer's), which is saved into the workdir for `sample`."""
    config, data = self.config, self.config.data
    if data.get("prepared") or data.get("mixture"):
      raise UserError("data.response_field reads instruction records from data.source and "
                      "tokenizes them in the run; unset data.prepared and data.mixture")
    if not data.get("source") or not data.get("eval_source"):
      raise UserError("data.response_field is set: name the instruction records with "
                      "data.source and the held-out ones with data.eval_source "
                      "(jsonl:PATH each)")
    skip = data.get("skip_malformed", False)
    examples = {"train": instructions.read_examples(data.source, self.format, skip),
                "validation": instructions.read_examples(data.eval_source, self.format, skip)}
    if data.tokenizer in ("char", "sentencepiece"):  # init_from's if it has one, else fitted
      texts = {k: "\n".join(e.prompt + e.response for e in v) for k, v in examples.items()}
      self.tokenizer = prepare_once(lm_text.make_tokenizer, data, texts, workdir,
                                    config.get("init_from", ""))
    else:
      self.tokenizer = open_tokenizer(data.tokenizer)
      if workdir and jax.process_index() == 0:
        self.tokenizer.save(workdir)
    self.rows = {k: instructions.encode_rows(self.tokenizer, v, config.seq_len)
                 for k, v in examples.items()}
    if data.get("packing") == "first_fit":  # evaluation keeps one example a row
      self.rows["train"] = instructions.pack(self.rows["train"], config.seed)
    if jax.process_index() == 0:
      for k, rows in self.rows.items():
        print(rows.describe(f"instructions ({k})"), flush=True)

  def model(self) -> nn.Module:
    return lm_model(self.config, self.tokenizer.vocab_size)

  def generations(self, params: Any) -> list[tuple[str, str]]:
    """(prompt, greedy continuation) for each of `config.sample.prompts`, by the model with
    `params` (the run's θ: adapters merged for decoding); [] without prompts.

    An instruction run's prompts are written into its template, as in training, and
    decoding stops at the tokenizer's EOS or after `sample.num_tokens` tokens.
    """
    # generation/text.py imports this module: import the decoder here.
    from reparam_jax.generation.decode import Sampling, decoding_params, generate
    sample = self.config.get("sample") or {}
    prompts = [str(p) for p in (sample.get("prompts") or ())]
    if not prompts:
      return []
    texts = [self.format.prompt_text(p) for p in prompts] if self.format else prompts
    ids = instructions.encode_prompts(self.tokenizer, texts)
    empty = [p for p, i in zip(prompts, ids) if not i]
    if empty:
      raise UserError(f"sample.prompts: {empty[0]!r} encodes to no tokens; give at least one "
                      "character the tokenizer knows")
    _, eos = document_boundaries(self.tokenizer)
    out = generate(self.model(), decoding_params(params, self.config.reparam), ids,
                   int(sample.get("num_tokens") or 32), Sampling(temperature=0.0),
                   stop_tokens=eos)
    return [(p, lm_text.decode_text(self.tokenizer, out.tokens[i, :out.lengths[i]]))
            for i, p in enumerate(prompts)]

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
    if self.rows is not None:
      return train_loader(self.rows["train"], self.config.batch_size, self.config.seed)
    if self.shards is not None:
      return corpus.packed_train_loader(
          [s for s, _ in self.mixture], [w for _, w in self.mixture], self.config.seq_len,
          self.config.batch_size, self.config.seed, self.config.data.packing)
    source = lm_text.WindowSource(self.tokens["train"], self.config.seq_len)
    return train_loader(source, self.config.batch_size, self.config.seed)

  def eval_batches(self) -> Iterable[Batch]:
    if self.rows is not None:
      return instructions.eval_batches(self.rows["validation"], self.config.eval_batch_size)
    if self.shards is not None:
      return self._prepared_eval_batches()
    return lm_text.eval_chunks(self.tokens["validation"], self.config.seq_len,
                               self.config.eval_batch_size)

  def _prepared_eval_batches(self) -> Iterator[Batch]:
    data = self.config.data
    held_out = corpus.held_out_shards(self.eval_folder, self.shards)
    size, length = self.config.eval_batch_size, self.config.seq_len
    rows = lm_text.concatenated_rows(held_out, length, size * data.eval_batches)
    # UTF-8 bytes of each row's targets, special tokens excluded: bits per byte
    # compares runs whose tokenizers differ.  A byte-level BPE character cut by
    # a row edge is counted as U+FFFD's 3 bytes, a few bytes in a row's thousands.
    row_bytes = np.asarray([[len(lm_text.decode_text(self.tokenizer, r[1:]).encode("utf-8"))]
                            for r in rows], np.float32)  # [rows, 1]: batch arrays are 2-D
    for b in range(0, len(rows), size):
      tokens, weights, nbytes = (rows[b:b + size], np.ones((len(rows[b:b + size]), length),
                                                           np.float32), row_bytes[b:b + size])
      pad = size - len(tokens)  # static shapes: the last batch is padded with empty rows
      if pad:
        tokens = np.concatenate([tokens, np.zeros((pad, length + 1), np.int32)])
        weights = np.concatenate([weights, np.zeros((pad, length), np.float32)])
        nbytes = np.concatenate([nbytes, np.zeros((pad, 1), np.float32)])
      yield host_slice({"tokens": tokens, "weights": weights, "bytes": nbytes})

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = apply_fn(batch["tokens"][:, :-1], train=train, **packed_inputs(batch))
    weights = target_weights(batch)
    total, count = cross_entropy(out["logits"], batch["tokens"][:, 1:], weights)
    loss = total / jnp.maximum(count, 1.0)
    metrics = {"loss": loss}
    if "source" in batch:  # a mixture: each folder's share of this batch's trained tokens
      w = jnp.ones_like(batch["source"][:, 1:], jnp.float32) if weights is None else weights
      for i in range(len(self.mixture)):
        metrics[f"mixture/{i}"] = (w * (batch["source"][:, 1:] == i)).sum() / w.sum()
    return loss, metrics

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    out = apply_fn(batch["tokens"][:, :-1], train=False, **packed_inputs(batch))
    total, count = cross_entropy(out["logits"], batch["tokens"][:, 1:], target_weights(batch))
    sums = {"loss_sum": total, "tokens": count}
    if "bytes" in batch:
      sums["bytes"] = batch["bytes"].sum()
    return sums

  @staticmethod
  def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
    loss = sums["loss_sum"] / max(sums["tokens"], 1.0)
    metrics = {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}
    if sums.get("bytes"):
      metrics["bits_per_byte"] = sums["loss_sum"] / np.log(2.0) / sums["bytes"]
    return metrics
