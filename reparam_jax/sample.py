r"""Generates text from a training run's latest checkpoint.

  python -m reparam_jax.sample --workdir=DIR --prompt="ROMEO:" [--num_tokens=300]
      [--temperature=0.8] [--top_k=40] [--seed=0]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.tasks.lm import lm_model
from reparam_jax.training import steps
from reparam_jax.training.evaluate import AUX_COLLECTION, load_run


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


@exit_on_user_error
def main(argv: Sequence[str]) -> str:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", default="\n")
  parser.add_argument("--num_tokens", type=int, default=300)
  parser.add_argument("--temperature", type=float, default=0.8)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  run = load_run(args.workdir)  # config, params and, for pruned runs, their masks
  config = run.config
  tokenizer = load_tokenizer(args.workdir)
  model = steps.ReparamHooks(config.reparam).wrap(lm_model(config, tokenizer.vocab_size))
  params = run.params
  extra = {AUX_COLLECTION: run.masks} if run.masks is not None else {}
  prompt = tokenizer.encode(args.prompt)
  if len(prompt) == 0:
    raise UserError("--prompt encodes to no tokens; give at least one character")
  apply_fn = lambda p, x: model.apply({"params": p, **extra}, x, train=False)["logits"]  # noqa: E731
  context = config.model.max_len or config.seq_len
  out = generate(apply_fn, params, prompt, args.num_tokens, context, args.temperature,
                 args.top_k, jax.random.key(args.seed))
  text = args.prompt + tokenizer.decode(out)
  print(text)
  return text


if __name__ == "__main__":
  main(sys.argv[1:])
