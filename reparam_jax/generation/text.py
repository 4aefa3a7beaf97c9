"""Text from a trained decoder LM: load a run, decode prompts with the cached generator."""

from __future__ import annotations

from typing import Sequence

import jax

from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.generation.decode import Sampling, decoding_params, generate
from reparam_jax.rundir.workdir import load_run
from reparam_jax.tasks.lm import lm_model


def sample_run(workdir: str, prompts: Sequence[str], num_tokens: int, sampling: Sampling,
               seed: int = 0, stop_token_ids: Sequence[int] = (), batch_size: int = 0
               ) -> list[str]:
  """Each prompt followed by up to `num_tokens` tokens from the run's latest checkpoint."""
  if not prompts:
    raise UserError("no prompts given; pass --prompt=TEXT or --prompt_file=FILE")
  run = load_run(workdir)  # config, params and, for pruned runs, their masks
  config = run.config
  if config.get("task", "lm") != "lm":
    raise UserError(f"{workdir} is a {config.task!r} run, not a decoder language model: "
                    "only a language model generates text")
  tokenizer = load_tokenizer(workdir)
  model = lm_model(config, tokenizer.vocab_size)
  # The reparameterization's effective weights, once for the whole call (not per token).
  params = decoding_params(run.params, config.reparam, run.masks)
  ids = [tokenizer.encode(p).tolist() for p in prompts]
  empty = [i for i, p in enumerate(ids) if not p]
  if empty:
    raise UserError(f"prompt {empty[0]} ({prompts[empty[0]]!r}) encodes to no tokens; give at "
                    "least one character")
  batch = batch_size or len(ids)
  texts = []
  for start in range(0, len(ids), batch):
    out = generate(model, params, ids[start:start + batch], num_tokens, sampling,
                   jax.random.fold_in(jax.random.key(seed), start), stop_token_ids)
    for row, prompt in enumerate(prompts[start:start + batch]):
      texts.append(prompt + tokenizer.decode(out.tokens[row, :out.lengths[row]].tolist()))
  return texts
