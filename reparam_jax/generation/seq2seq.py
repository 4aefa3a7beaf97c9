"""Decoding an encoder–decoder: encode once, then a cached decoder loop on device.

The encoder runs once per call.  The first decoder call passes its output and
stores every layer's cross-attention keys and values in the cache; each later
step feeds one token and reads them back (models/seq2seq.py).  Greedy,
sampled (the `Sampling` of decode.py) and beam search share the cache layout;
beam search keeps `beams` rows per input and reorders the cache rows when
beams are re-ranked.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.generation.decode import Generated, Sampling, check_token_lists, choose
from reparam_jax.models.seq2seq import EncoderDecoder, init_cache

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Beam:
  """Beam search settings: `size` beams per input (1 = greedy / sampling)."""

  size: int = 1
  # Scores are Σ log p / length^alpha (HF's `length_penalty`); 0 ranks by Σ log p.
  length_penalty: float = 1.0


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 8
              ) -> tuple[np.ndarray, np.ndarray]:
  """ids [B, S] and mask [B, S] (True on tokens); encoder inputs need no alignment."""
  longest = max(len(s) for s in sequences)
  width = -(-longest // multiple) * multiple
  ids = np.full((len(sequences), width), pad_id, np.int32)
  mask = np.zeros((len(sequences), width), bool)
  for row, s in enumerate(sequences):
    ids[row, :len(s)] = np.asarray(s, np.int32)
    mask[row, :len(s)] = True
  return ids, mask


def check_request(model: EncoderDecoder, inputs: Sequence[Sequence[int]], max_new_tokens: int,
                  sampling: Sampling, beam: Beam) -> None:
  """One-line errors before any compute."""
  cfg = model.cfg
  check_token_lists(inputs, "input", max_new_tokens, cfg.vocab_size)
  longest = max(len(s) for s in inputs)
  if cfg.learned_positions and (longest > cfg.max_len or max_new_tokens > cfg.max_len):
    raise UserError(f"the model's learned positions stop at {cfg.max_len}: an input of "
                    f"{longest} tokens or {max_new_tokens} new tokens do not fit; shorten them")
  if beam.size < 1:
    raise UserError(f"beams={beam.size}: use 1 (no beam search) or more")
  sampling.check()


def generate(model: EncoderDecoder, params: PyTree, inputs: Sequence[Sequence[int]],
             max_new_tokens: int, *, start_id: int, eos_id: int, pad_id: int = 0,
             sampling: Sampling = Sampling(temperature=0.0), beam: Beam = Beam(),
             rng: jax.Array | None = None) -> Generated:
  """Up to `max_new_tokens` output tokens per input (EOS included), `pad_id` after it.

  `beam.size > 1` is beam search (sampling settings are then ignored) and
  returns each input's best finished hypothesis.
  """
  check_request(model, inputs, max_new_tokens, sampling, beam)
  ids, mask = right_pad(inputs, pad_id)
  rng = jax.random.key(0) if rng is None else rng
  if beam.size > 1:
    run = _beam_search(model, max_new_tokens, beam, start_id, eos_id, pad_id)
    tokens, lengths = run(params, ids, mask)
  else:
    run = _sampler(model, max_new_tokens, sampling, start_id, eos_id, pad_id)
    tokens, lengths = run(params, ids, mask, rng)
  return Generated(np.asarray(tokens), np.asarray(lengths))


def _start(model: EncoderDecoder, params: PyTree, ids_BxS: jax.Array, mask_BxS: jax.Array,
           rows: int, steps: int, start_id: int) -> tuple[jax.Array, PyTree, jax.Array]:
  """Encodes, sizes the cache and runs the first decoder step: logits [rows, V], cache, mask.

  `rows` is a multiple of the batch (beams): each input's encoding is repeated.
  """
  memory = model.apply({"params": params}, ids_BxS, mask_BxS, method=EncoderDecoder.encode)
  repeat = rows // ids_BxS.shape[0]
  memory, mask = jnp.repeat(memory, repeat, axis=0), jnp.repeat(mask_BxS, repeat, axis=0)
  cache = init_cache(model, params, rows, steps, memory, mask)
  first = jnp.full((rows, 1), start_id, jnp.int32)
  logits, cache = _step(model, params, cache, first, memory, mask)
  return logits, cache, mask


def _step(model: EncoderDecoder, params: PyTree, cache: PyTree, ids_Bx1: jax.Array,
          memory: jax.Array | None, mask: jax.Array) -> tuple[jax.Array, PyTree]:
  out, updated = model.apply({"params": params, "cache": cache}, ids_Bx1, memory, mask,
                             decode=True, method=EncoderDecoder.decode, mutable=["cache"])
  return out["logits"][:, -1].astype(jnp.float32), updated["cache"]


def _lengths(tokens_BxN: jax.Array, eos_id: int) -> jax.Array:
  is_eos = tokens_BxN == eos_id
  return jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1,
                   tokens_BxN.shape[1]).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _sampler(model: EncoderDecoder, steps: int, sampling: Sampling, start_id: int, eos_id: int,
             pad_id: int):
  """Greedy or sampled decoding, jitted (one compile per input shape)."""

  @jax.jit
  def run(params, ids_BxS, mask_BxS, rng):
    B = ids_BxS.shape[0]
    logits, cache, mask = _start(model, params, ids_BxS, mask_BxS, B, steps, start_id)
    first = choose(logits, sampling, jax.random.fold_in(rng, 0))
    tokens = jnp.full((B, steps), pad_id, jnp.int32).at[:, 0].set(first)

    def cond(state):
      j, _, _, done, _ = state
      return (j < steps) & ~jnp.all(done)

    def body(state):
      j, last, cache, done, tokens = state
      logits, cache = _step(model, params, cache, last[:, None], None, mask)
      nxt = jnp.where(done, pad_id, choose(logits, sampling, jax.random.fold_in(rng, j)))
      tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, j))
      return j + 1, nxt, cache, done | (nxt == eos_id), tokens

    state = (jnp.ones((), jnp.int32), first, cache, first == eos_id, tokens)
    tokens = jax.lax.while_loop(cond, body, state)[-1]
    return tokens, _lengths(tokens, eos_id)

  return run


def _reorder(cache: PyTree, rows: jax.Array) -> PyTree:
  """Cache rows in the order `rows` (the shared scalar write index stays)."""
  return jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)


@functools.lru_cache(maxsize=16)
def _beam_search(model: EncoderDecoder, steps: int, beam: Beam, start_id: int, eos_id: int,
                 pad_id: int):
  """Beam search, jitted: `beam.size` live hypotheses per input, the K best finished kept.

  Each step extends every live beam by every token, keeps the 2K best
  extensions (so K of them can go on even if K end in EOS), moves those that
  end in EOS to the finished pool (score Σ log p / length^alpha) and the best
  K others on.  It stops when no live beam can still beat the worst finished
  one, or after `steps` tokens; then live beams count as finished.
  """
  K = beam.size
  alpha = beam.length_penalty
  neg = jnp.float32(-1e9)

  def normalised(scores, length):
    return scores / jnp.asarray(length, jnp.float32) ** alpha

  @jax.jit
  def run(params, ids_BxS, mask_BxS):
    B = ids_BxS.shape[0]
    logits, cache, mask = _start(model, params, ids_BxS, mask_BxS, B * K, steps, start_id)
    # All K beams start identical: only beam 0 may expand at the first step.
    live_scores = jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, neg)[None], (B, 1))
    live_seqs = jnp.full((B, K, steps), pad_id, jnp.int32)
    done_seqs = jnp.full((B, K, steps), pad_id, jnp.int32)
    done_scores = jnp.full((B, K), neg)

    def expand(j, logits, cache, live_seqs, live_scores, done_seqs, done_scores):
      V = logits.shape[-1]
      logp = jax.nn.log_softmax(logits).reshape(B, K, V)
      cand = (live_scores[..., None] + logp).reshape(B, K * V)
      top_scores, top_idx = jax.lax.top_k(cand, 2 * K)
      parent, token = top_idx // V, (top_idx % V).astype(jnp.int32)
      seqs = jnp.take_along_axis(live_seqs, parent[..., None], axis=1)
      seqs = jax.lax.dynamic_update_slice(seqs, token[..., None], (0, 0, j))
      ends = (token == eos_id) | (j == steps - 1)
      # Finished pool: the old K and this step's finished, best K by normalised score.
      fin_scores = jnp.where(ends, normalised(top_scores, j + 1), neg)
      pool_scores = jnp.concatenate([done_scores, fin_scores], axis=1)
      pool_seqs = jnp.concatenate([done_seqs, seqs], axis=1)
      done_scores, keep = jax.lax.top_k(pool_scores, K)
      done_seqs = jnp.take_along_axis(pool_seqs, keep[..., None], axis=1)
      # Live beams: the best K extensions that did not end.
      go_scores, go = jax.lax.top_k(jnp.where(ends, neg, top_scores), K)
      live_seqs = jnp.take_along_axis(seqs, go[..., None], axis=1)
      rows = (jnp.arange(B)[:, None] * K + jnp.take_along_axis(parent, go, axis=1)).reshape(-1)
      last = jnp.take_along_axis(token, go, axis=1).reshape(-1)
      return _reorder(cache, rows), last, live_seqs, go_scores, done_seqs, done_scores

    state = expand(0, logits, cache, live_seqs, live_scores, done_seqs, done_scores)

    def cond(state):
      j, _, _, _, live_scores, _, done_scores = state
      # Log-probs only fall, so a live beam's best possible final score is its
      # score now at the longest length (alpha ≥ 0) — the usual bound.
      best_live = normalised(live_scores.max(axis=1), steps if alpha > 0 else j)
      can_improve = (best_live > done_scores.min(axis=1)) & (live_scores.max(axis=1) > neg / 2)
      return (j < steps) & jnp.any(can_improve)

    def body(state):
      j, cache, last, live_seqs, live_scores, done_seqs, done_scores = state
      logits, cache = _step(model, params, cache, last[:, None], None, mask)
      return (j + 1, *expand(j, logits, cache, live_seqs, live_scores, done_seqs, done_scores))

    cache, last, live_seqs, live_scores, done_seqs, done_scores = state
    state = (jnp.ones((), jnp.int32), cache, last, live_seqs, live_scores, done_seqs,
             done_scores)
    done_seqs, done_scores = jax.lax.while_loop(cond, body, state)[-2:]
    tokens = done_seqs[:, 0]
    lengths = _lengths(tokens, eos_id)
    # A finished hypothesis's slots after its EOS hold pad_id already.
    return tokens, lengths

  return run
