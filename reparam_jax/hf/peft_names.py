"""Which Hugging Face module each of the project's linear layers is, for PEFT adapters.

PEFT names an adapter tensor after the `nn.Module` it wraps, relative to the
`transformers` model class the base was loaded as, behind `base_model.model.`:

  base_model.model.encoder.layer.0.attention.self.query.lora_A.weight        (BertModel)
  base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight   (BertFor*)

so the backbone of a BERT with heads sits under `bert.`, and its heads
(`classifier`, `cls.*`) do not.  The table here is the module half of
hf/bert.py's tensor table; it is built from the parameter tree (a layer the
tree lacks is not listed), so it needs no model config.

GPT-2 is not here: its attention is one fused `c_attn` (q|k|v) module, so a
per-projection adapter has no one-to-one PEFT counterpart (docs/peft.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reparam_jax.errors import UserError
from reparam_jax.pytree.paths import dict_leaves

BERT_PREFIX = "bert."
_HEADS = ("mlm_head", "nsp_head", "classifier")


@dataclasses.dataclass(frozen=True)
class Modules:
  """`ours`: project module path (its weight is `path/kernel`) → HF module name as the
  model class the params correspond to names it (with `bert.` where that class has it)."""

  family: str
  ours: dict[str, str]
  backbone_prefix: str  # "bert." for a BERT with heads, "" for BertModel

  def hf_name(self, path: str) -> str:
    if path not in self.ours:
      raise UserError(f"parameter {path}/kernel has no {self.family} linear module PEFT can "
                      f"adapt (adaptable: {', '.join(sorted(self.ours)[:6])}, ...)")
    return self.ours[path]

  def our_path(self, hf_name: str) -> str | None:
    """The project path of a HF module name, with or without the backbone prefix."""
    table = {v: k for k, v in self.ours.items()}
    if hf_name in table:
      return table[hf_name]
    # An adapter saved on BertModel loads onto a BertFor* base and vice versa (PEFT
    # itself would not, but the modules are the same).
    if self.backbone_prefix and f"{self.backbone_prefix}{hf_name}" in table:
      return table[f"{self.backbone_prefix}{hf_name}"]
    if hf_name.startswith(BERT_PREFIX) and hf_name[len(BERT_PREFIX):] in table:
      return table[hf_name[len(BERT_PREFIX):]]
    return None


def node_paths(tree: Any) -> set[str]:
  """Every path of a nested-dict tree, inner nodes included: a reparameterized weight
  (`block_0/attn/query/kernel` holding θ) is found as well as a dense one."""
  out: set[str] = set()
  for path, _ in dict_leaves(tree):
    parts = path.split("/")
    out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
  return out


def family_of(paths: set[str]) -> str:
  """'bert' from the parameter tree's `node_paths`; UserError for any other model."""
  if any(p.startswith(("encoder/", "decoder/")) for p in paths):
    raise UserError("PEFT adapters are supported for BERT models only; this is an "
                    "encoder-decoder (T5) parameter tree")
  if "block_0/attn/query/kernel" in paths and "embed/ln" in paths:
    return "bert"
  if "ln_final" in paths:
    raise UserError("PEFT adapters are supported for BERT models only: GPT-2 fuses query, key "
                    "and value into one c_attn module, which per-projection adapters do not "
                    "map onto (docs/peft.md)")
  raise UserError("these parameters are not a BERT model's (no embed/ln, block_0/attn/query); "
                  "PEFT adapters are supported for BERT models only")


def modules(tree: Any) -> Modules:
  """The linear modules of a (BERT) parameter tree, dense or reparameterized."""
  paths = node_paths(tree)
  family_of(paths)  # BERT only, for now
  has = lambda path: f"{path}/kernel" in paths
  heads = any(p in _HEADS for p in paths)
  pre = BERT_PREFIX if heads else ""
  ours: dict[str, str] = {}
  i = 0
  while has(f"block_{i}/attn/query"):
    h, b = f"{pre}encoder.layer.{i}.", f"block_{i}/"
    for name in ("query", "key", "value"):
      ours[f"{b}attn/{name}"] = f"{h}attention.self.{name}"
    ours[f"{b}attn/out"] = f"{h}attention.output.dense"
    ours[f"{b}mlp/fc_in"] = f"{h}intermediate.dense"
    ours[f"{b}mlp/fc_out"] = f"{h}output.dense"
    i += 1
  for path, name in (("pooler", f"{pre}pooler.dense"),
                     ("mlm_head/transform", "cls.predictions.transform.dense"),
                     ("nsp_head/out", "cls.seq_relationship"),
                     ("classifier/out", "classifier")):
    if has(path):
      ours[path] = name
  return Modules("bert", {k: v for k, v in ours.items() if has(k)}, pre)
