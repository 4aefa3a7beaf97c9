"""Sequence-to-sequence pre-training: T5 span corruption on any text corpus the LM task reads.

The encoder reads the text with some spans replaced by sentinels; the decoder
writes each sentinel followed by the span it hid (Raffel et al. 2020, §3.1.4:
15 % noise, mean span 3).  Training is teacher forcing with label smoothing;
eval reports the unsmoothed loss, token accuracy and span accuracy (the
fraction of hidden spans whose every token is predicted right).

The corpus: Tiny Shakespeare by default; `data.source` (tokenized into the
workdir at the start) or `data.prepared` (a `prepare_data` folder, evaluated on
`data.eval_prepared`) streams documents from token shards, either concatenated
into raw windows (`data.packing="concat"`, T5's way) or corrupted one document
window at a time and packed first-fit with segment ids ("first_fit"): see
data/span_corruption.py.

Vocabulary of the model, T5's layout on top of the corpus tokenizer:
  0 pad (also the decoder's start token), 1 EOS, 2 … V+1 the tokenizer's ids
  shifted by 2, then `num_sentinels` sentinels (<extra_id_0> is the first);
or, with a pretrained T5's tokenizer (`init_from` a T5 folder or its
`convert_hf` output), that tokenizer's own ids and sentinels (`Vocabulary`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reparam_jax.data import corpus, lm_text, span_corruption, token_shards
from reparam_jax.data.pipeline import prepare_once, train_loader
from reparam_jax.data.tokenizers import Tokenizer
from reparam_jax.errors import UserError
from reparam_jax.models import transformer_config
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.tasks.base import Task

Batch = dict[str, Any]
PAD, EOS, OFFSET = 0, 1, 2
SENTINEL = re.compile(r"<extra_id_(\d+)>")


def seq2seq_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields the seq2seq task and the encoder–decoder read, on top of `base_config()`."""
  c.task = "seq2seq"
  c.seq2seq = ml_collections.ConfigDict()
  c.seq2seq.noise_density = 0.15
  c.seq2seq.mean_span = 3.0
  c.seq2seq.num_sentinels = 100
  c.seq2seq.label_smoothing = 0.1
  # Model options of the encoder–decoder (TransformerConfig; the defaults are T5 v1.1's).
  c.model.pre_norm = True
  c.model.norm = "rms"
  c.model.use_bias = False
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.model.attention_scale = True  # T5 folds 1/√d into its init; this init does not
  c.model.activation = "gelu"
  c.model.mlp_gated = True
  c.model.head_size = 0
  c.model.tie_embeddings = False
  c.model.tied_logits_scale = False
  c.model.layer_norm_eps = 1e-6
  c.model.sinusoidal = False
  c.model.embed_scale = False
  c.model.num_decoder_layers = 0
  return c


class Vocabulary:
  """Model ids ↔ text, with pad (0), EOS (1) and sentinels, in one of two layouts.

  The project's, on top of a tokenizer without sentinels (char, a fitted
  SentencePiece, GPT-2's BPE): the tokenizer's ids shifted by `OFFSET`, then
  `num_sentinels` sentinels (<extra_id_0> first).  A pretrained T5's own, when
  the tokenizer has the sentinel tokens itself (data/sentencepiece_json.py adds
  them as transformers does, <extra_id_0> at the top): its ids unchanged, pad 0
  and EOS 1 already where the task puts them, so a T5 checkpoint's embeddings
  mean what they were trained to mean.
  """

  def __init__(self, tokenizer: Tokenizer, num_sentinels: int, own: bool | None = None):
    """`own`: the tokenizer's own ids (None: where it has sentinels of its own)."""
    self.tokenizer = tokenizer
    self.num_sentinels = num_sentinels
    sentinels = _own_sentinels(tokenizer)
    if own or (own is None and sentinels):
      if len(sentinels) < num_sentinels:
        raise UserError(f"the tokenizer has {len(sentinels)} sentinels (<extra_id_N>) but "
                        f"seq2seq.num_sentinels={num_sentinels}; set it to {len(sentinels)} "
                        "or less")
      backend = getattr(tokenizer, "backend", None)
      pad, eos = ((backend.token_to_id(_name(tokenizer, "pad_token", "<pad>")),
                   backend.token_to_id(_name(tokenizer, "eos_token", "</s>")))
                  if backend else (None, None))
      if (pad, eos) != (PAD, EOS):
        raise UserError(f"the tokenizer's pad and EOS ids are {pad} and {eos}, not T5's {PAD} "
                        f"and {EOS}: a pretrained encoder–decoder's tokenizer must have T5's "
                        "layout (<pad> 0, </s> 1)")
      self.offset, self.sentinel_ids = 0, sentinels[:num_sentinels]
      self.size = tokenizer.vocab_size
    else:
      self.offset = OFFSET
      first = tokenizer.vocab_size + OFFSET
      self.sentinel_ids = list(range(first, first + num_sentinels))
      self.size = first + num_sentinels
    self._sentinel_of = {t: k for k, t in enumerate(self.sentinel_ids)}

  @classmethod
  def of_pretrained(cls, tokenizer: Tokenizer) -> "Vocabulary":
    """A pretrained T5's: its own ids, with every sentinel its tokenizer has."""
    return cls(tokenizer, len(_own_sentinels(tokenizer)), own=True)

  def sentinel(self, k: int) -> int:
    return self.sentinel_ids[k]

  def encode(self, text: str) -> list[int]:
    """Text with optional `<extra_id_N>` markers → model ids (no EOS)."""
    ids: list[int] = []
    for i, piece in enumerate(SENTINEL.split(text)):
      if i % 2:  # a captured sentinel number
        if int(piece) >= self.num_sentinels:
          raise UserError(f"<extra_id_{piece}>: the model has {self.num_sentinels} sentinels "
                          f"(<extra_id_0> … <extra_id_{self.num_sentinels - 1}>)")
        ids.append(self.sentinel(int(piece)))
      elif piece:
        ids += (self.tokenizer.encode(piece) + self.offset).tolist()
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    out, run = [], []
    for t in ids:
      t = int(t)
      if t in self._sentinel_of or t in (PAD, EOS) or t < self.offset:
        out.append(self.tokenizer.decode(run))
        run = []
        if t in self._sentinel_of:
          out.append(f"<extra_id_{self._sentinel_of[t]}>")
        elif t == EOS:
          break
        continue
      run.append(t - self.offset)
    out.append(self.tokenizer.decode(run))
    return "".join(out)


def _own_sentinels(tokenizer: Tokenizer) -> list[int]:
  """The ids of `<extra_id_0>`, `<extra_id_1>`, … in a tokenizer that has them."""
  backend = getattr(tokenizer, "backend", None)
  if backend is None:
    return []
  out = []
  while (t := backend.token_to_id(f"<extra_id_{len(out)}>")) is not None:
    out.append(t)
  return out


def _name(tokenizer: Tokenizer, key: str, default: str) -> str:
  value = tokenizer.config.get(key) or default
  return value.get("content", default) if isinstance(value, dict) else value


def seq2seq_model(config: ml_collections.ConfigDict, vocab_size: int) -> EncoderDecoder:
  model_cfg = dict(config.model)
  model_cfg["vocab_size"] = model_cfg.get("vocab_size") or vocab_size
  model_cfg["max_len"] = model_cfg.get("max_len") or config.seq_len
  model_cfg["causal"] = False  # the decoder stack is causal by construction
  return EncoderDecoder(transformer_config(model_cfg))


def smoothed_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                           smoothing: float) -> jax.Array:
  """Per-token cross-entropy against (1 − s)·one-hot + s/V (Szegedy et al. 2016)."""
  V = logits_BxTxV.shape[-1]
  labels = optax.smooth_labels(jax.nn.one_hot(targets_BxT, V), smoothing) if smoothing else (
      jax.nn.one_hot(targets_BxT, V))
  return optax.softmax_cross_entropy(logits_BxTxV.astype(jnp.float32), labels)


class Seq2SeqTask(Task):
  ENCODER_DECODER = True

  @classmethod
  def holdout_unread(cls, config: ml_collections.ConfigDict) -> str | None:
    return lm_text.holdout_unread(config.data)

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    self.config = config
    s = config.seq2seq
    self.shards = self._corpus_shards(config, workdir)
    if self.shards is not None:
      self.tokenizer = self.shards.tokenizer()
      if workdir and jax.process_index() == 0:
        self.tokenizer.save(workdir)  # what `sample` encodes and decodes with
    else:
      self.splits = lm_text.load_splits(config.data)
      self.tokenizer = prepare_once(lm_text.make_tokenizer, config.data, self.splits, workdir,
                                    config.get("init_from", ""))
    self.vocab = Vocabulary(self.tokenizer, s.num_sentinels)
    if self.shards is None:
      self.tokens = {k: self.tokenizer.encode(v) + self.vocab.offset
                     for k, v in self.splits.items()}
    # The raw window whose corrupted form fills seq_len exactly (T5's random_spans_helper).
    self.raw_length, self.targets_length = span_corruption.raw_length_for(
        config.seq_len, s.noise_density, s.mean_span)
    self.transform_kwargs = dict(
        inputs_length=config.seq_len, targets_length=self.targets_length,
        noise_density=s.noise_density, mean_span=s.mean_span,
        sentinel_ids=self.vocab.sentinel_ids, eos_id=EOS, pad_id=PAD)

  def _corpus_shards(self, config: ml_collections.ConfigDict, workdir: str | None
                     ) -> token_shards.TokenShards | None:
    """The (first) training folder of token shards (data.prepared or data.mixture, or
    data.source tokenized into the workdir), with `self.mixture` and `self.eval_folder`;
    None for the built-in Tiny Shakespeare."""
    folders, self.eval_folder = corpus.run_folders(config, workdir)
    if not folders:
      return None
    self.mixture = corpus.open_folders(folders)
    return self.mixture[0][0]

  def model(self) -> nn.Module:
    return seq2seq_model(self.config, self.vocab.size)

  @classmethod
  def model_from_config(cls, config: ml_collections.ConfigDict, vocab_size: int
                        ) -> tuple[nn.Module, tuple[np.ndarray, ...]]:
    """(`model()`, `init_args()`) without reading data (see `LanguageModelTask`)."""
    s = config.seq2seq
    _, targets_length = span_corruption.raw_length_for(config.seq_len, s.noise_density,
                                                       s.mean_span)
    return (seq2seq_model(config, vocab_size + OFFSET + s.num_sentinels),
            (np.zeros((1, config.seq_len), np.int32), np.zeros((1, targets_length), np.int32)))

  def init_args(self) -> tuple[np.ndarray, ...]:
    return (np.zeros((1, self.config.seq_len), np.int32),
            np.zeros((1, self.targets_length), np.int32))

  def train_iterator(self) -> Iterator[Batch]:
    if self.shards is not None:
      documents = corpus.host_documents([s for s, _ in self.mixture],
                                        [w for _, w in self.mixture], self.config.seed)
      return span_corruption.corpus_rows(
          documents, packing=self.config.data.packing, raw_length=self.raw_length,
          global_batch=self.config.batch_size, seed=self.config.seed, offset=self.vocab.offset,
          num_bins=corpus.PACKING_BINS, mixture=len(self.mixture) > 1,
          **self.transform_kwargs)
    source = span_corruption.SpanCorruptionSource(self.tokens["train"], self.raw_length)
    return train_loader(source, self.config.batch_size, self.config.seed,
                        span_corruption.make_transform(**self.transform_kwargs))

  def eval_batches(self) -> Iterable[Batch]:
    tokens = self.tokens["validation"] if self.shards is None else self._held_out_tokens()
    return span_corruption.eval_batches(tokens, raw_length=self.raw_length,
                                        global_batch=self.config.eval_batch_size,
                                        seed=self.config.seed, **self.transform_kwargs)

  def _held_out_tokens(self) -> np.ndarray:
    """The first `data.eval_batches` batches' worth of raw windows of the held-out folder's
    documents, concatenated: the same windows (and masks) at every evaluation."""
    held_out = corpus.held_out_shards(self.eval_folder, self.shards)
    need = self.raw_length * self.config.eval_batch_size * self.config.data.eval_batches
    tokens = lm_text.concatenated_tokens(held_out, need)[:need]
    if len(tokens) < 2:
      raise UserError(f"{held_out.out_dir} holds {len(tokens)} tokens: too few to evaluate on")
    return tokens.astype(np.int32) + self.vocab.offset

  @staticmethod
  def _logits(apply_fn: Callable[..., dict], batch: Batch, train: bool) -> jax.Array:
    # Packed rows (data.packing="first_fit") carry segment ids: each example attends to itself.
    return apply_fn(batch["inputs"], batch["decoder_inputs"],
                    inputs_mask_BxS=batch["inputs_mask"],
                    inputs_segment_ids_BxS=batch.get("inputs_segment_ids"),
                    targets_segment_ids_BxT=batch.get("targets_segment_ids"),
                    train=train)["logits"]

  def loss(self, apply_fn: Callable[..., dict], batch: Batch,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = self._logits(apply_fn, batch, train)
    weights = batch["target_weights"]
    losses = smoothed_cross_entropy(logits, batch["targets"],
                                    self.config.seq2seq.label_smoothing)
    loss = (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    metrics = {"loss": loss}
    if "raw_source" in batch:  # a mixture: each folder's share of the raw tokens corrupted
      raw = batch["raw_source"]
      for i in range(len(self.mixture)):
        metrics[f"mixture/{i}"] = (raw == i + 1).sum() / jnp.maximum((raw > 0).sum(), 1)
    return loss, metrics

  def eval_sums(self, apply_fn: Callable[..., dict], batch: Batch) -> dict[str, jax.Array]:
    logits = self._logits(apply_fn, batch, train=False)
    targets, weights, spans = batch["targets"], batch["target_weights"], batch["target_spans"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    right = (jnp.argmax(logits, -1) == targets)
    # Span k of a row is right when none of its tokens is wrong.
    span_ids = jnp.arange(1, self.config.seq2seq.num_sentinels + 1)
    in_span_BxTxK = spans[..., None] == span_ids
    present_BxK = in_span_BxTxK.any(axis=1)
    wrong_BxK = (in_span_BxTxK & ~right[..., None]).any(axis=1)
    return {"loss_sum": (nll * weights).sum(), "tokens": weights.sum(),
            "correct": (right * weights).sum(), "spans": present_BxK.sum(),
            "spans_correct": (present_BxK & ~wrong_BxK).sum()}

  @staticmethod
  def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
    tokens = max(sums["tokens"], 1.0)
    return {"loss": sums["loss_sum"] / tokens, "accuracy": sums["correct"] / tokens,
            "span_accuracy": sums["spans_correct"] / max(sums["spans"], 1.0)}

