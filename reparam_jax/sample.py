r"""Generates text from a decoder LM or an encoder–decoder run.

  python -m reparam_jax.sample --workdir=DIR --prompt="ROMEO:" [--num_tokens=300]
      [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--seed=0]
  python -m reparam_jax.sample --workdir=DIR --prompt_file=prompts.txt [--batch_size=8]
      [--stop_token_ids=50256]

DIR is a training workdir (its latest checkpoint) or `compress` output, a
Hugging Face folder (decoders: GPT-2, Llama, Qwen 2, Mistral; encoder–decoder:
T5), or a `convert_hf` output of one; such a model encodes and decodes with its
own tokenizer (the folder's tokenizer.json, else its SentencePiece model or
GPT-2's vocab.json + merges.txt) and stops at its own end-of-text tokens
(generation_config.json's eos_token_id) unless --stop_token_ids is given.

An encoder–decoder (a seq2seq run, a T5 folder) reads each prompt as its input,
with `<extra_id_N>` for a sentinel, and prints the decoder's output; --beams=K
is beam search (--length_penalty: score = Σ log p / length^alpha;
--early_stopping: transformers' stopping rule, false, true or never).

One prompt per line of --prompt_file; the prompts of a batch decode together
(left-padded, each row independent of the others).  --temperature=0 is greedy
decoding.  Decoding keeps a key/value cache on device
(reparam_jax/generation/decode.py); a reparameterized run's effective weights
are computed once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.generation.decode import Sampling
from reparam_jax.generation.text import sample_run


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
  if prompt is not None and prompt_file:
    raise UserError("give --prompt or --prompt_file, not both")
  if not prompt_file:
    return ["\n" if prompt is None else prompt]
  try:
    with open(prompt_file, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  except OSError as e:
    raise UserError(f"cannot read --prompt_file={prompt_file}: {e.strerror}") from None


# --early_stopping's values: transformers' `early_stopping` (generation/seq2seq.py's Beam).
EARLY_STOPPING = {"false": False, "true": True, "never": "never"}


@exit_on_user_error
def main(argv: Sequence[str]) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--workdir", required=True, help="training workdir, compress output, "
                      "Hugging Face folder (decoder or T5) or convert_hf output")
  parser.add_argument("--prompt", default=None)
  parser.add_argument("--prompt_file", default=None, help="one prompt per line")
  parser.add_argument("--batch_size", type=int, default=0, help="prompts per call; 0 = all")
  parser.add_argument("--num_tokens", type=int, default=300)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--stop_token_ids", default="", help="comma-separated ids ending a row "
                      "(a pretrained model: its eos_token_id by default)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--beams", type=int, default=1, help="encoder–decoder: beam search width")
  parser.add_argument("--length_penalty", type=float, default=1.0,
                      help="beam search: score = sum log p / length^alpha")
  parser.add_argument("--early_stopping", choices=list(EARLY_STOPPING), default="false",
                      help="beam search stopping rule, as transformers' early_stopping")
  args = parser.parse_args(argv)
  try:
    stops = [int(t) for t in args.stop_token_ids.split(",") if t.strip()]
  except ValueError:
    raise UserError(f"--stop_token_ids={args.stop_token_ids!r}: expected comma-separated "
                    "integers") from None
  texts = sample_run(args.workdir, read_prompts(args.prompt, args.prompt_file), args.num_tokens,
                     Sampling(args.temperature, args.top_k, args.top_p), args.seed, stops,
                     args.batch_size, args.beams, args.length_penalty,
                     EARLY_STOPPING[args.early_stopping])
  print("\n\n".join(texts))
  return texts


if __name__ == "__main__":
  main(sys.argv[1:])
