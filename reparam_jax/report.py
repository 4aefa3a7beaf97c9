r"""Prints what a config's reparameterization does to the model's size and FLOPs.

  python -m reparam_jax.report --config=configs/lm/x.py [--config.reparam.rank=16] \
      [--vocab_size=N] [--tokens_per_seq=N]

Builds the model exactly as the trainer does (`transformer_config(config.model)`
→ `Transformer` → `reparam.wrap`), initializes it under `jax.eval_shape` (no
memory is allocated, so any size works), and prints per matched weight and in
total: dense params, stored params, trainable params, matmul FLOPs per token
(dense and reparameterized) and the compression ratio.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.reparam import format_report, report_rows, wrap
from reparam_jax.reparam.intercept import accepts_structured
from reparam_jax.reparam.rules import Plan


def model_rows(config: Any, vocab_size: int = 0, tokens_per_seq: int | None = None
               ) -> list[dict[str, Any]]:
  """`report_rows` for the Transformer of `config` (plus its tied output layer)."""
  model_cfg = dict(config.model)
  model_cfg["vocab_size"] = model_cfg.get("vocab_size") or vocab_size
  if not model_cfg["vocab_size"]:
    raise UserError("config.model.vocab_size is 0 (taken from the tokenizer at train time); "
                    "pass --vocab_size=N to the report")
  seq_len = int(config.get("seq_len") or model_cfg.get("max_len") or 1)
  model_cfg["max_len"] = model_cfg.get("max_len") or seq_len
  cfg = transformer_config(model_cfg)
  model = Transformer(cfg)
  wrapped = wrap(model, config.reparam)
  ids = jnp.zeros((1, seq_len), jnp.int32)
  abstract = jax.eval_shape(lambda k: wrapped.init({"params": k}, ids, train=False),
                            jax.random.key(0))
  plan = Plan.from_config(config.reparam)
  structured = accepts_structured(model) if plan.structured == "auto" else bool(plan.structured)
  rows = report_rows(abstract["params"], config.reparam, tokens_per_seq, structured)
  if cfg.causal and cfg.tie_embeddings:
    # The tied output layer multiplies by the (materialized) embedding table.
    f = 2 * cfg.vocab_size * cfg.embed_dim
    tied = dict(path="(tied output logits)", spec="", shape=(cfg.embed_dim, cfg.vocab_size),
                dense=0, stored=0, trainable=0, flops_dense=f, flops=f, bits_per_weight=0.0,
                compression=1.0)
    total = rows[-1]
    total["flops_dense"] += f
    total["flops"] += f
    if tokens_per_seq:
      tied["flops_per_seq"] = f * tokens_per_seq
      total["flops_per_seq"] = total["flops"] * tokens_per_seq
    rows.insert(len(rows) - 1, tied)
  return rows


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  from reparam_jax.config import load as config_load  # noqa: PLC0415

  argv = list(sys.argv[1:] if argv is None else argv)
  config, rest = config_load.load(argv)
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.report", allow_abbrev=False)
  parser.add_argument("--vocab_size", type=int, default=0,
                      help="vocabulary size when config.model.vocab_size is 0")
  parser.add_argument("--tokens_per_seq", type=int, default=0,
                      help="also print FLOPs per sequence of this many tokens")
  args = parser.parse_args(rest)
  rows = model_rows(config, args.vocab_size, args.tokens_per_seq or None)
  print(format_report(rows))
  total = rows[-1]
  print(f"\nstored {total['stored']:,} of {total['dense']:,} dense params "
        f"({total['compression']:.2f}x), trainable {total['trainable']:,}; "
        f"matmul FLOPs/token {total['flops']:,} vs {total['flops_dense']:,} dense "
        f"({total['flops'] / max(total['flops_dense'], 1):.3f}x)")


if __name__ == "__main__":
  main()
