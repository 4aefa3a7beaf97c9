"""Text from a trained run: a decoder LM continues prompts, an encoder–decoder answers them.

Both decode with the cached on-device generators (decode.py, seq2seq.py).
"""

from __future__ import annotations

from typing import Sequence

import jax

from reparam_jax.data.tokenizers import load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.generation import seq2seq
from reparam_jax.generation.decode import Sampling, decoding_params, generate
from reparam_jax.rundir.workdir import Run, load_run
from reparam_jax.tasks import seq2seq as seq2seq_task
from reparam_jax.tasks.lm import lm_model


def sample_run(workdir: str, prompts: Sequence[str], num_tokens: int, sampling: Sampling,
               seed: int = 0, stop_token_ids: Sequence[int] = (), batch_size: int = 0,
               beams: int = 1, length_penalty: float = 1.0) -> list[str]:
  """Each prompt followed by up to `num_tokens` tokens from the run's latest checkpoint.

  For an encoder–decoder run the prompt is the encoder's input (`<extra_id_N>`
  marks a sentinel) and the output is the decoder's text; `beams > 1` is beam search.
  """
  if not prompts:
    raise UserError("no prompts given; pass --prompt=TEXT or --prompt_file=FILE")
  run = load_run(workdir)  # config, params and, for pruned runs, their masks
  config = run.config
  if config.get("task", "lm") == "seq2seq":
    return _answer(run, prompts, num_tokens, sampling, seed, batch_size,
                   seq2seq.Beam(beams, length_penalty))
  if beams > 1:
    raise UserError("--beams is for encoder–decoder runs; a language model samples or decodes "
                    "greedily (--temperature=0)")
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


def _answer(run: Run, prompts: Sequence[str], num_tokens: int, sampling: Sampling, seed: int,
            batch_size: int, beam: seq2seq.Beam) -> list[str]:
  """The decoder's text for each prompt of an encoder–decoder run."""
  config = run.config
  vocab = seq2seq_task.Vocabulary(load_tokenizer(run.workdir), config.seq2seq.num_sentinels)
  model = seq2seq_task.seq2seq_model(config, vocab.size)
  params = decoding_params(run.params, config.reparam, run.masks)
  ids = [vocab.encode(p) + [seq2seq_task.EOS] for p in prompts]
  batch = batch_size or len(ids)
  texts = []
  for start in range(0, len(ids), batch):
    out = seq2seq.generate(model, params, ids[start:start + batch], num_tokens,
                           start_id=seq2seq_task.PAD, eos_id=seq2seq_task.EOS,
                           pad_id=seq2seq_task.PAD, sampling=sampling, beam=beam,
                           rng=jax.random.fold_in(jax.random.key(seed), start))
    texts += [vocab.decode(out.tokens[row, :out.lengths[row]].tolist())
              for row in range(out.tokens.shape[0])]
  return texts
