r"""Generates text from a training run's latest checkpoint.

  python -m reparam_jax.sample --workdir=DIR --prompt="ROMEO:" [--num_tokens=300]
      [--temperature=0.8] [--top_k=40] [--seed=0]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from reparam_jax.errors import exit_on_user_error
from reparam_jax.generation.text import sample_run


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
  text = sample_run(args.workdir, args.prompt, args.num_tokens, args.temperature, args.top_k,
                    args.seed)
  print(text)
  return text


if __name__ == "__main__":
  main(sys.argv[1:])
