r"""Prints what a config's reparameterization does to the model's size and FLOPs.

  python -m reparam_jax.report --config=configs/lm/x.py [--config.reparam.rank=16] \
      [--vocab_size=N] [--tokens_per_seq=N]

Builds the model the trainer builds: the task's model (a decoder LM, an
encoder with its pooler and task heads, an encoder–decoder, ...) wrapped by
`config.reparam`, initialized under `jax.eval_shape` (no memory is allocated,
so any size works) and without reading the data
(reparam_jax/perf/reparam_report.py).  Prints per matched weight and in
total: dense params, stored params, trainable params, matmul FLOPs per token
(dense and reparameterized) and the compression ratio; then the stored and
trainable params of each top-level module.  Trainable counts are the
trainer's `params/trainable`: what the reparameterization and
`finetune.freeze` leave to the optimizer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from reparam_jax.config import load as config_load
from reparam_jax.errors import exit_on_user_error
from reparam_jax.hf import pretrained
from reparam_jax.perf.reparam_report import abstract_model, format_modules, model_rows, module_rows
from reparam_jax.reparam import format_report
from reparam_jax.reparam.stats import format_rule_summary


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  config, rest = config_load.load(argv)
  config = pretrained.resolve(config)  # a pretrained init_from supplies the architecture
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.report", allow_abbrev=False)
  parser.add_argument("--vocab_size", type=int, default=0,
                      help="the tokenizer's vocabulary size, when config.model.vocab_size is 0 "
                      "and the run inherits no tokenizer (init_from's)")
  parser.add_argument("--tokens_per_seq", type=int, default=0,
                      help="also print FLOPs per sequence of this many tokens")
  args = parser.parse_args(rest)
  built = abstract_model(config, args.vocab_size)
  rows = model_rows(config, args.vocab_size, args.tokens_per_seq or None, built)
  print(format_report(rows))
  total = rows[-1]
  print(f"\nstored {total['stored']:,} of {total['dense']:,} dense params "
        f"({total['compression']:.2f}x), trainable {total['trainable']:,}; "
        f"matmul FLOPs/token {total['flops']:,} vs {total['flops_dense']:,} dense "
        f"({total['flops'] / max(total['flops_dense'], 1):.3f}x)")
  if len(rows) > 1:  # per rule: each adapter's trainable parameters, bytes and FLOPs
    print("\n" + format_rule_summary(rows))
  print("\n" + format_modules(module_rows(built)))


if __name__ == "__main__":
  main()
