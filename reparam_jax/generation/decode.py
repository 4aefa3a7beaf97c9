"""Decoding with a key/value cache, the whole loop on device.

`generate` left-pads a batch of prompts of different lengths, runs the prompt
through the model once (prefill, filling the cache), then one position per
step inside `jax.lax.while_loop`: no host round trip per token, one compile
per (batch, padded prompt length, new tokens) shape.  Each row's positions
count its own tokens, and padded slots are never attended, so a row's output
does not depend on the rest of the batch.

The model is a plain causal `Transformer` and `params` are dense weights:
`decoding_params` computes a reparameterized run's effective weights once per
call (LoRA merged, low-rank multiplied out, int8 dequantized, masks applied,
a variational posterior at its mean), not once per token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.models import Transformer
from reparam_jax.reparam import Reparam

PyTree = Any
PROMPT_MULTIPLE = 8  # prompts are left-padded to a multiple of this: fewer shapes to compile


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen: greedy (temperature 0) or sampled."""

  temperature: float = 1.0  # 0: greedy (argmax)
  top_k: int = 0  # > 0: sample among the k most likely tokens
  top_p: float = 1.0  # < 1: nucleus sampling, the smallest set with this much probability

  def check(self) -> None:
    if self.temperature < 0:
      raise UserError(f"temperature={self.temperature} is negative; use 0 for greedy "
                      "decoding or a positive value")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"top_p={self.top_p} is outside (0, 1]; use 1 to turn nucleus "
                      "sampling off")
    if self.top_k < 0:
      raise UserError(f"top_k={self.top_k} is negative; use 0 to turn it off")


@dataclasses.dataclass
class Generated:
  tokens: np.ndarray  # [B, max_new_tokens], `pad_id` after a row stopped
  lengths: np.ndarray  # [B] tokens generated per row (a stop token included)


def choose(logits_BxV: jax.Array, sampling: Sampling, key: jax.Array) -> jax.Array:
  """The next token of each row under `sampling`."""
  logits = logits_BxV.astype(jnp.float32)
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
    kept = jnp.where(before < sampling.top_p, sorted_desc, jnp.inf)  # the first one always
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             multiple: int = PROMPT_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
  """ids [B, P] and padding mask [B, P] (True on tokens), prompts aligned to the right."""
  longest = max(len(p) for p in prompts)
  width = -(-longest // multiple) * multiple
  ids = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for row, p in enumerate(prompts):
    if len(p):
      ids[row, width - len(p):] = np.asarray(p, np.int32)
      mask[row, width - len(p):] = True
  return ids, mask


def check_request(model: Transformer, prompts: Sequence[Sequence[int]],
                  max_new_tokens: int, sampling: Sampling) -> None:
  """One-line errors before any compute."""
  if not model.cfg.causal:
    raise UserError("this checkpoint is not a decoder (its model is not causal): only a "
                    "language model generates text")
  if model.cfg.share_layers:
    raise UserError("decoding a model with share_layers=True is not supported yet: its layers "
                    "would share one key/value cache")
  check_token_lists(prompts, "prompt", max_new_tokens, model.cfg.vocab_size)
  longest = max(len(p) for p in prompts)
  if longest >= model.cfg.max_len:
    raise UserError(f"a prompt of {longest} tokens leaves no room in the model's context of "
                    f"{model.cfg.max_len} tokens; shorten it to at most "
                    f"{model.cfg.max_len - 1}")
  sampling.check()


def check_token_lists(sequences: Sequence[Sequence[int]], what: str, max_new_tokens: int,
                      vocab_size: int) -> None:
  """The checks every generator makes first: some non-empty sequences of known ids."""
  if not sequences:
    raise UserError(f"no {what}s given")
  empty = [i for i, p in enumerate(sequences) if len(p) == 0]
  if empty:
    raise UserError(f"{what} {empty[0]} is empty (encodes to no tokens); give at least one token")
  if max_new_tokens < 1:
    raise UserError(f"num_tokens={max_new_tokens}: generate at least 1 token")
  bad = [t for p in sequences for t in p if not 0 <= int(t) < vocab_size]
  if bad:
    raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")


def generate(model: Transformer, params: PyTree, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, sampling: Sampling = Sampling(), rng: jax.Array | None = None,
             stop_tokens: Sequence[int] = (), pad_id: int = 0) -> Generated:
  """Up to `max_new_tokens` tokens after each prompt, decoded with a key/value cache.

  Within the model's context (prompt + new tokens ≤ max_len) this is one
  on-device call.  Beyond it a row goes on in windows: once its context is
  full, its last half context is prefilled again and decoding continues from
  there (learned positions cannot slide inside a cache).  Each row's windows
  depend on its own length only, so batching never changes a row's tokens.
  """
  check_request(model, prompts, max_new_tokens, sampling)
  rng = jax.random.key(0) if rng is None else rng
  stops = tuple(int(t) for t in stop_tokens)
  context, keep = model.cfg.max_len, model.cfg.max_len // 2
  new: list[list[int]] = [[] for _ in prompts]
  finished = [False] * len(prompts)
  window = 0
  while not all(finished):
    rows = [list(p) + n for p, n in zip(prompts, new)]
    ctx = rows if window == 0 else [r[-keep:] for r in rows]
    limits = [0 if f else min(context - len(c), max_new_tokens - len(n))
              for f, c, n in zip(finished, ctx, new)]
    steps = max(limits) if window == 0 else context - keep  # one compile for all later windows
    out = _call(model, params, ctx, steps, limits, sampling, jax.random.fold_in(rng, window),
                stops, pad_id)
    for i, limit in enumerate(limits):
      if finished[i]:
        continue
      got = out.tokens[i, :out.lengths[i]].tolist()
      new[i] += got
      finished[i] = len(new[i]) >= max_new_tokens or (len(got) < limit) or not got
    window += 1
  tokens = np.full((len(prompts), max_new_tokens), pad_id, np.int32)
  for i, n in enumerate(new):
    tokens[i, :len(n)] = n
  return Generated(tokens, np.asarray([len(n) for n in new], np.int32))


def _call(model: Transformer, params: PyTree, prompts: Sequence[Sequence[int]], steps: int,
          limits: Sequence[int], sampling: Sampling, rng: jax.Array, stops: tuple[int, ...],
          pad_id: int) -> Generated:
  ids, mask = left_pad(prompts, pad_id)
  run = _decoder(model, sampling, steps, stops, pad_id)
  tokens, lengths = run(params, ids, mask, np.asarray(limits, np.int32), rng)
  return Generated(np.asarray(tokens), np.asarray(lengths))


@functools.lru_cache(maxsize=16)
def _decoder(model: Transformer, sampling: Sampling, steps: int, stop_tokens: tuple[int, ...],
             pad_id: int):
  """The jitted prefill + decode loop for these settings (compiled once per input shape).

  Row b generates at most `limits[b]` tokens and stops after a stop token; its
  later slots hold `pad_id`.  Returns tokens [B, steps] and each row's count.
  """
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

  def apply(params, cache, ids_BxL, mask_BxL, positions_BxL):
    out, updated = model.apply({"params": params, "cache": cache}, ids_BxL,
                               padding_mask_BxL=mask_BxL, positions_BxL=positions_BxL,
                               decode=True, mutable=["cache"])
    return out["logits"][:, -1], updated["cache"]

  @jax.jit
  def run(params, ids_BxP, mask_BxP, limits_B, rng):
    B, P = ids_BxP.shape
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((B, P + steps), jnp.int32), decode=True))
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
    lengths_B = mask_BxP.sum(axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = apply(params, cache, ids_BxP, mask_BxP, positions)
    active = limits_B > 0
    first = jnp.where(active, choose(logits, sampling, jax.random.fold_in(rng, 0)), pad_id)
    tokens = jnp.full((B, steps), pad_id, jnp.int32).at[:, 0].set(first)
    done = ~active | jnp.isin(first, stops)

    def cond(state):
      j, _, _, done, _ = state
      return (j < steps) & ~jnp.all(done)

    def body(state):
      j, last, cache, done, tokens = state
      positions = (lengths_B + j - 1)[:, None]  # the token fed is the (j-1)-th new one
      logits, cache = apply(_tied_to_step(params, j), cache, last[:, None], jnp.ones((B, 1), bool), positions)
      done = done | (j >= limits_B)
      nxt = jnp.where(done, pad_id, choose(logits, sampling, jax.random.fold_in(rng, j)))
      tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, j))
      return j + 1, nxt, cache, done | jnp.isin(nxt, stops), tokens

    state = (jnp.ones((), jnp.int32), first, cache, done, tokens)
    _, _, _, _, tokens = jax.lax.while_loop(cond, body, state)
    real = jnp.arange(steps)[None, :] < limits_B[:, None]
    is_stop = jnp.isin(tokens, stops) & real
    count = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1) + 1,
                      jnp.minimum(limits_B, steps))
    return tokens, count.astype(jnp.int32)

  return run


def _tied_to_step(params: PyTree, step: jax.Array) -> PyTree:
  """`params` with its integer leaves (stored codes: packed, int8) made to depend on `step`.

  XLA hoists loop-invariant work out of a while loop, a stored kernel's conversion to
  float included: the loop would then read a float32 copy of int8 codes, 4× the bytes a
  step, and lose what storing them small was for.  An optimization barrier with the
  step counter makes their decoding loop-variant.  Float leaves stay invariant: there
  the hoisting pays (XLA folds each bias into its kernel once, not every step).
  """
  leaves, treedef = jax.tree.flatten(params)
  codes = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.integer)]
  if not codes:
    return params
  tied, _ = jax.lax.optimization_barrier(([leaves[i] for i in codes], step))
  for i, leaf in zip(codes, tied):
    leaves[i] = leaf
  return jax.tree.unflatten(treedef, leaves)


def decoding_params(params: PyTree, reparam_config: Any, masks: PyTree | None = None) -> PyTree:
  """Dense effective weights of a (possibly reparameterized) run, computed once."""
  if not reparam_config.get("rules"):
    return params
  return Reparam.from_config(reparam_config).to_dense(params, masks)
