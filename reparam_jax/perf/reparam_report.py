"""What a config's reparameterization does to its Transformer: parameters and FLOPs per weight.

`python -m reparam_jax.report` prints these rows; the trainer writes the
same table (of the built model) to `WORKDIR/reparam_report.txt`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.intercept import structured_for


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
  rp = Reparam.from_config(config.reparam)
  wrapped = rp.wrap(model)
  ids = jnp.zeros((1, seq_len), jnp.int32)
  abstract = jax.eval_shape(lambda k: wrapped.init({"params": k}, ids, train=False),
                            jax.random.key(0))
  rows = rp.report_rows(abstract["params"], tokens_per_seq, structured_for(rp.plan, model))
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
