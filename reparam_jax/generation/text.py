"""Text from a trained decoder LM: autoregressive sampling, and loading a run to sample from."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.state import AUX_COLLECTION
from reparam_jax.rundir.workdir import load_run
from reparam_jax.tasks.lm import lm_model


def generate(apply_fn, params, prompt_ids: np.ndarray, num_tokens: int, context: int,
             temperature: float, top_k: int, rng: jax.Array) -> np.ndarray:
  """Autoregressive sampling with a sliding window of `context` tokens.

  One jitted forward over a fixed `[1, context]` buffer per token: no
  recompilation, and plenty fast for the small models trained here.
  """
  @jax.jit
  def next_token(buffer_1xC, length, key):
    logits = apply_fn(params, buffer_1xC)[0, length - 1].astype(jnp.float32)
    logits = logits / max(temperature, 1e-6)
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][-1]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits)

  ids = list(prompt_ids)
  for i in range(num_tokens):
    window = ids[-context:]
    buffer = np.zeros((1, context), np.int32)
    buffer[0, :len(window)] = window
    ids.append(int(next_token(buffer, len(window), jax.random.fold_in(rng, i))))
  return np.asarray(ids[len(prompt_ids):])


def sample_run(workdir: str, prompt: str, num_tokens: int, temperature: float, top_k: int,
               seed: int) -> str:
  """The prompt followed by `num_tokens` sampled from the run's latest checkpoint."""
  run = load_run(workdir)  # config, params and, for pruned runs, their masks
  config = run.config
  tokenizer = load_tokenizer(workdir)
  model = Reparam.from_config(config.reparam).wrap(lm_model(config, tokenizer.vocab_size))
  extra = {AUX_COLLECTION: run.masks} if run.masks is not None else {}
  prompt_ids = tokenizer.encode(prompt)
  if len(prompt_ids) == 0:
    raise UserError("--prompt encodes to no tokens; give at least one character")

  def apply_fn(p: Any, x: jax.Array) -> jax.Array:
    return model.apply({"params": p, **extra}, x, train=False)["logits"]

  context = config.model.max_len or config.seq_len
  out = generate(apply_fn, run.params, prompt_ids, num_tokens, context, temperature, top_k,
                 jax.random.key(seed))
  return prompt + tokenizer.decode(out)
