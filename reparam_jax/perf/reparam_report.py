"""What a config's reparameterization does to its model: parameters and FLOPs per weight.

`python -m reparam_jax.report` prints these rows; the trainer writes the
same table (of the built model) to `WORKDIR/reparam_report.txt`.

The model is the one the trainer builds: the task's (`tasks/*.py`: a
decoder LM, an encoder with its task heads, an encoder–decoder, a VAE),
wrapped by the reparameterization and initialised under `jax.eval_shape`
(nothing is allocated).  A task's model depends on its data only through
the tokenizer's vocabulary size, so the data is not read: the vocabulary is
`config.model.vocab_size`, else that of the tokenizer the run inherits
(`init_from`'s, a distillation teacher's), else `--vocab_size`.  The
trainable counts are the trainer's: the reparameterization's mask ANDed with
`finetune.freeze`'s (`training/freezing.py`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from reparam_jax import tasks
from reparam_jax.data.tokenizers import has_tokenizer, load_tokenizer
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer, transformer_config
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.intercept import structured_for
from reparam_jax.training import freezing


@dataclasses.dataclass
class AbstractModel:
  """The wrapped model of a config, initialised abstractly."""

  model: nn.Module  # the task's model, before wrapping
  rp: Reparam
  boxed: Any  # the θ params collection, with its logical-axis boxes (ShapeDtypeStructs)
  params: Any  # the same, unboxed
  trainable: Any  # the trainer's mask (None: every parameter trains)


def task_vocab_size(config: Any, vocab_size: int = 0) -> int:
  """The tokenizer's vocabulary size the task would find, read without the data (`vocab_size`
  when the run fits its own tokenizer; unused when `config.model.vocab_size` is set)."""
  if config.model.get("vocab_size") or config.get("task") is None:
    return vocab_size
  inherited = tasks.task_class(config).inherited_tokenizer(config)
  if inherited and has_tokenizer(inherited):
    return load_tokenizer(inherited).vocab_size
  return vocab_size


def task_model(config: Any, vocab_size: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
  """The model `make_task(config, ...).model()` builds, and inputs for its `init`.

  `vocab_size`: the tokenizer's, used where `config.model.vocab_size` is 0
  and the run inherits no tokenizer.  A config without a `task` gives the
  bare Transformer of its `model` section.
  """
  vocab = task_vocab_size(config, vocab_size)
  if not (config.model.get("vocab_size") or vocab):
    raise UserError("config.model.vocab_size is 0 (taken from the tokenizer at train time); "
                    "pass --vocab_size=N to the report")
  seq_len = int(config.get("seq_len") or config.model.get("max_len") or 1)
  if config.get("task") is None:
    model_cfg = dict(config.model, vocab_size=config.model.get("vocab_size") or vocab)
    model_cfg["max_len"] = model_cfg.get("max_len") or seq_len
    return Transformer(transformer_config(model_cfg)), (np.zeros((1, seq_len), np.int32),)
  return tasks.task_class(config).model_from_config(config, vocab)


def abstract_model(config: Any, vocab_size: int = 0) -> AbstractModel:
  """The trainer's wrapped model of `config`, its abstract params and trainable mask."""
  model, init_args = task_model(config, vocab_size)
  rp = Reparam.from_config(config.reparam)
  wrapped = rp.wrap(model)
  abstract = jax.eval_shape(lambda k: wrapped.init({"params": k}, *init_args, train=False),
                            jax.random.key(0))
  params = nn.meta.unbox(abstract["params"])
  # The trainer's mask (training/loop.py): the reparameterization's AND finetune.freeze's.
  trainable = freezing.combine(rp.trainable_mask(params),
                               freezing.trainable_mask(params, config.get("finetune")))
  return AbstractModel(model, rp, abstract["params"], params, trainable)


def model_rows(config: Any, vocab_size: int = 0, tokens_per_seq: int | None = None,
               built: AbstractModel | None = None) -> list[dict[str, Any]]:
  """`report_rows` for the model of `config` (plus a causal LM's tied output layer), with
  trainable counts under `finetune.freeze`."""
  built = built or abstract_model(config, vocab_size)
  model, rp = built.model, built.rp
  rows = rp.report_rows(built.boxed, tokens_per_seq, structured_for(rp.plan, model))
  if freezing.trainable_mask(built.params, config.get("finetune")) is not None:
    rows = with_trainable(rows, built.params, built.trainable)
  cfg = getattr(model, "cfg", None)
  if isinstance(model, Transformer) and cfg.causal and cfg.tie_embeddings:
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


def with_trainable(rows: list[dict[str, Any]], params: Any, trainable: Any
                   ) -> list[dict[str, Any]]:
  """`rows` (the last one the total) with trainable counts under the trainer's mask
  (`freezing.combine` of the reparameterization's and `finetune.freeze`'s)."""
  sizes, trains = _flat_trainable(params, trainable)
  for row in rows[:-1]:
    row["trainable"] = sum(n for p, n in sizes.items()
                           if trains[p] and (p == row["path"] or p.startswith(row["path"] + "/")))
  rows[-1]["trainable"] = freezing.count_trainable(params, trainable)
  return rows


def module_rows(built: AbstractModel) -> list[dict[str, Any]]:
  """Stored and trainable parameters per top-level module: `embed`, the blocks in order,
  then the rest (`ln_final`, `pooler`, `classifier`, ...) by name."""
  sizes, trains = _flat_trainable(built.params, built.trainable)
  rows: dict[str, dict[str, Any]] = {}
  for path, n in sizes.items():
    row = rows.setdefault(path.split("/")[0], dict(stored=0, trainable=0))
    row["stored"] += n
    row["trainable"] += n if trains[path] else 0

  def order(name: str) -> tuple[int, int, str]:
    block = re.fullmatch(r"block_(\d+)", name)
    return (0, 0, "") if name == "embed" else (1, int(block.group(1)), "") if block else (
        2, 0, name)

  return [dict(module=k, **rows[k]) for k in sorted(rows, key=order)]


def format_modules(rows: list[dict[str, Any]]) -> str:
  width = max([len("module")] + [len(r["module"]) for r in rows])
  lines = [f"{'module':<{width}} {'stored':>14} {'trainable':>14}"]
  lines += [f"{r['module']:<{width}} {r['stored']:>14,} {r['trainable']:>14,}" for r in rows]
  return "\n".join(lines)


def _flat_trainable(params: Any, mask: Any) -> tuple[dict[str, int], dict[str, bool]]:
  """({leaf path: entries}, {leaf path: trains}) of `params` under a `combine`d mask."""
  full = (jax.tree.map(lambda _: True, params) if mask is None else
          jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params))
  name = lambda kp: "/".join(str(getattr(k, "key", k)) for k in kp)  # noqa: E731
  sizes = {name(kp): int(np.prod(x.shape)) for kp, x in
           jax.tree_util.tree_flatten_with_path(params)[0]}
  trains = {name(kp): bool(t) for kp, t in jax.tree_util.tree_flatten_with_path(full)[0]}
  return sizes, trains
