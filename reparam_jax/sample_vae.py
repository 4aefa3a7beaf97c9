r"""Sentences from a trained text VAE: from the prior, or along a line between two sentences.

  python -m reparam_jax.sample_vae --workdir=DIR --prior=5 [--temperature=0] [--seed=0]
  python -m reparam_jax.sample_vae --workdir=DIR --interpolate="first sentence|second one" \
      [--steps=5]

`--prior=N` decodes N draws z ~ N(0, I).  `--interpolate` encodes both
sentences to their posterior means and decodes `steps` evenly spaced points
z = (1 − α) μ_a + α μ_b, α = 0 … 1.  Decoding is greedy at temperature 0
(the default; the clearest view of what z encodes), else sampled.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.generation.vae import sample_vae_run


@exit_on_user_error
def main(argv: Sequence[str]) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prior", type=int, default=0, help="number of sentences from the prior")
  parser.add_argument("--interpolate", default="", help='two sentences, "first|second"')
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if bool(args.prior) == bool(args.interpolate):
    raise UserError("give exactly one of --prior=N or --interpolate=\"first|second\"")
  if args.prior < 0 or (args.interpolate and args.steps < 2):
    raise UserError("--prior must be positive and --steps at least 2")
  parts = args.interpolate.split("|") if args.interpolate else []
  if args.interpolate and (len(parts) != 2 or not all(p.strip() for p in parts)):
    raise UserError('--interpolate needs two non-empty sentences: "first|second"')
  texts, alpha = sample_vae_run(args.workdir, args.prior, parts, args.steps, args.temperature,
                                args.seed)
  for i, text in enumerate(texts):
    label = f"{i}" if alpha is None else f"α={float(alpha[i, 0]):.2f}"
    print(f"{label}\t{text}")
  return texts


if __name__ == "__main__":
  main(sys.argv[1:])
