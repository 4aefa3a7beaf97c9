"""Decoding an encoder–decoder: encode once, then a cached decoder loop on device.

The encoder runs once per call.  The first decoder call passes its output and
stores every layer's cross-attention keys and values in the cache; each later
step feeds one token and reads them back (models/seq2seq.py).  Greedy,
sampled (the `Sampling` of decode.py) and beam search share the cache layout;
beam search keeps `beams` rows per input and reorders the cache rows when
beams are re-ranked.  Beam search follows transformers' `generate(num_beams=…)`
rules and defaults (length penalty, `early_stopping`).
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
  """Beam search settings, transformers' `generate` arguments and defaults.

  `size` beams per input (1 = greedy / sampling).  A finished hypothesis
  scores Σ log p / length^length_penalty (length: generated tokens, EOS
  included); 0 ranks by Σ log p, > 0 favours longer outputs.
  `early_stopping` is the stopping rule: False (transformers' default) stops
  an input once its best live beam, scored at its current length, cannot beat
  its worst of `size` finished ones; "never" scores the live beam at the
  longest length when length_penalty > 0 (the exact bound: never stops while
  a longer output could still win); True stops as soon as `size` hypotheses
  have finished.
  """

  size: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False


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
  if not (isinstance(beam.early_stopping, bool) or beam.early_stopping == "never"):
    raise UserError(f"early_stopping={beam.early_stopping!r}: use False (transformers' "
                    "default), True or 'never'")
  if not np.isfinite(beam.length_penalty):
    raise UserError(f"length_penalty={beam.length_penalty}: use a finite number")
  sampling.check()


def generate(model: EncoderDecoder, params: PyTree, inputs: Sequence[Sequence[int]],
             max_new_tokens: int, *, start_id: int, eos_id: int, pad_id: int = 0,
             sampling: Sampling = Sampling(temperature=0.0), beam: Beam = Beam(),
             rng: jax.Array | None = None) -> Generated:
  """Up to `max_new_tokens` output tokens per input (EOS included), `pad_id` after it.

  `beam.size > 1` is beam search (sampling settings are then ignored) and
  returns each input's best finished hypothesis, as transformers' beam search
  does with the same length penalty and early_stopping.
  """
  check_request(model, inputs, max_new_tokens, sampling, beam)
  ids, mask = right_pad(inputs, pad_id)
  rng = jax.random.key(0) if rng is None else rng
  if beam.size > 1:
    run = _beam_search(model, max_new_tokens, beam.size, start_id, eos_id, pad_id)
    tokens, lengths = run(params, ids, mask, jnp.float32(beam.length_penalty),
                          jnp.asarray(beam.early_stopping is True),
                          jnp.asarray(beam.early_stopping == "never" and beam.length_penalty > 0))
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


# transformers' "impossible" score.  It is added (not assigned) where transformers adds it, so
# that scores and the order of ties come out as theirs do.
_NEG = -1e9


@functools.lru_cache(maxsize=16)
def _beam_search(model: EncoderDecoder, steps: int, K: int, start_id: int, eos_id: int,
                 pad_id: int):
  """Beam search, jitted, step for step transformers' `_beam_search` (`BeamSearchScorer`).

  The length penalty and the stopping rule are arguments of the compiled
  function (not compile-time constants): one compile serves every setting.
  Per step and input:
  - every live beam is extended by every token and the 2K best extensions kept
    (so K can go on even if K of them end);
  - an extension ending in EOS (or at the length limit) joins the K best
    finished, scored Σ log p / length^α (length: generated tokens, EOS
    included, not the start token), only if it ranks among the best K of the
    2K, and only while the input is still open;
  - the best K that did not end are the live beams.
  An input closes when its K finished slots are full and no live beam's bound
  beats the worst of them: the best live score / length^α, at the current
  length, or at the longest (`steps`) for early_stopping="never" with α > 0;
  with early_stopping=True it closes as soon as K are finished.  The loop
  stops when every input is closed, or after `steps` tokens.
  """

  @jax.jit
  def run(params, ids_BxS, mask_BxS, alpha, stop_when_full, bound_at_longest):
    B = ids_BxS.shape[0]
    logits, cache, mask = _start(model, params, ids_BxS, mask_BxS, B * K, steps, start_id)
    # All K beams start identical: only beam 0 may expand at the first step.
    live_scores = jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, _NEG)[None], (B, 1))
    live_seqs = jnp.full((B, K, steps), pad_id, jnp.int32)
    done_seqs = jnp.full((B, K, steps), pad_id, jnp.int32)
    done_scores = jnp.full((B, K), _NEG, jnp.float32)
    done_real = jnp.zeros((B, K), bool)  # a finished hypothesis (not a placeholder) in the slot
    still_open = jnp.ones((B,), bool)  # the input may still gain finished hypotheses
    in_top_k = jnp.arange(2 * K) < K

    def penalised(length):
      return jnp.asarray(length, jnp.float32) ** alpha

    def expand(j, logits, cache, live_seqs, live_scores, done_seqs, done_scores, done_real,
               still_open):
      V = logits.shape[-1]
      logp = jax.nn.log_softmax(logits).reshape(B, K, V)
      cand = (logp + live_scores[..., None]).reshape(B, K * V)
      top_scores, top_idx = jax.lax.top_k(cand, 2 * K)
      parent, token = top_idx // V, (top_idx % V).astype(jnp.int32)
      seqs = jnp.take_along_axis(live_seqs, parent[..., None], axis=1)
      seqs = jax.lax.dynamic_update_slice(seqs, token[..., None], (0, 0, j))
      ends = (token == eos_id) | (j == steps - 1)
      # Live beams: the best K extensions that did not end.
      live_scores, go = jax.lax.top_k(top_scores + ends.astype(jnp.float32) * _NEG, K)
      live_seqs = jnp.take_along_axis(seqs, go[..., None], axis=1)
      rows = (jnp.arange(B)[:, None] * K + jnp.take_along_axis(parent, go, axis=1)).reshape(-1)
      last = jnp.take_along_axis(token, go, axis=1).reshape(-1)
      # Finished: those of the best K that ended, while the input is open (and, for
      # early_stopping=True, not yet full), merged with the K kept, the best K kept.
      joins = ends & in_top_k
      full = done_real.all(axis=1) & stop_when_full
      fin_scores = top_scores / penalised(j + 1)
      fin_scores += full[:, None].astype(jnp.float32) * _NEG
      fin_scores += (~still_open)[:, None].astype(jnp.float32) * _NEG
      fin_scores += (~joins).astype(jnp.float32) * _NEG
      done_scores, keep = jax.lax.top_k(jnp.concatenate([done_scores, fin_scores], axis=1), K)
      done_seqs = jnp.take_along_axis(jnp.concatenate([done_seqs, seqs], axis=1),
                                      keep[..., None], axis=1)
      done_real = jnp.take_along_axis(jnp.concatenate([done_real, joins], axis=1), keep, axis=1)
      # Close the inputs whose best live beam cannot beat their worst finished one
      # (transformers' `_check_early_stop_heuristic`; an empty slot counts as -1e9).
      bound_length = jnp.where(bound_at_longest, steps, j + 1)
      best_possible = live_scores[:, 0] / penalised(bound_length)
      worst_done = jnp.where(done_real, done_scores.min(axis=1, keepdims=True), _NEG)
      still_open &= (best_possible[:, None] > worst_done).any(axis=1)
      return (_reorder(cache, rows), last, live_seqs, live_scores, done_seqs, done_scores,
              done_real, still_open)

    state = expand(0, logits, cache, live_seqs, live_scores, done_seqs, done_scores, done_real,
                   still_open)

    def cond(state):
      j, done_real, still_open = state[0], state[-2], state[-1]
      all_full = done_real.all() & stop_when_full
      return (j < steps) & still_open.any() & ~all_full

    def body(state):
      j, cache, last, *rest = state
      logits, cache = _step(model, params, cache, last[:, None], None, mask)
      return (j + 1, *expand(j, logits, cache, *rest))

    state = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), *state))
    done_seqs = state[5]
    # The best slot holds a finished hypothesis: at the last step the best K all end.
    tokens = done_seqs[:, 0]
    # A finished hypothesis's slots after its EOS hold pad_id already.
    return tokens, _lengths(tokens, eos_id)

  return run
