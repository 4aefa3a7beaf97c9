"""Which Hugging Face module each of the project's linear layers is, for PEFT adapters.

PEFT names an adapter tensor after the `nn.Module` it wraps, relative to the
`transformers` model class the base was loaded as, behind `base_model.model.`:

  base_model.model.encoder.layer.0.attention.self.query.lora_A.weight        (BertModel)
  base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight   (BertFor*)
  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight             (LlamaForCausalLM)

Each family's module (hf/bert.py, hf/llama.py, hf/t5.py) gives the names from
the same table its import and export read (`peft_modules`), built from the
parameter tree (a layer the tree lacks is not listed), so it needs no model
config.

GPT-2 is not supported yet: its attention is one fused `c_attn` (q|k|v)
module, so a per-projection adapter has no one-to-one PEFT counterpart
(docs/peft.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reparam_jax.errors import UserError
from reparam_jax.hf import FAMILY_MODULES
from reparam_jax.pytree.paths import dict_leaves


@dataclasses.dataclass(frozen=True)
class Modules:
  """`ours`: project module path (its weight is `path/kernel`) → HF module name as the
  model class the params correspond to names it (with its backbone prefix where that
  class has one)."""

  ours: dict[str, str]
  backbone_prefix: str  # "bert." for a BERT with heads, "model." for a Llama, "" for BertModel
  family_prefix: str  # the family's backbone prefix, whether or not this class uses it

  def hf_name(self, path: str) -> str:
    if path not in self.ours:
      raise UserError(f"parameter {path}/kernel has no linear module PEFT can adapt "
                      f"(adaptable: {', '.join(sorted(self.ours)[:6])}, ...)")
    return self.ours[path]

  def our_path(self, hf_name: str) -> str | None:
    """The project path of a HF module name, with or without the backbone prefix."""
    table = {v: k for k, v in self.ours.items()}
    if hf_name in table:
      return table[hf_name]
    # An adapter saved on BertModel loads onto a BertFor* base and vice versa (PEFT
    # itself would not, but the modules are the same).
    pre = self.family_prefix
    if pre and f"{pre}{hf_name}" in table:
      return table[f"{pre}{hf_name}"]
    if pre and hf_name.startswith(pre) and hf_name[len(pre):] in table:
      return table[hf_name[len(pre):]]
    return None


def node_paths(tree: Any) -> set[str]:
  """Every path of a nested-dict tree, inner nodes included: a reparameterized weight
  (`block_0/attn/query/kernel` holding θ) is found as well as a dense one."""
  out: set[str] = set()
  for path, _ in dict_leaves(tree):
    parts = path.split("/")
    out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
  return out


def modules(tree: Any) -> Modules:
  """The linear modules of a parameter tree (dense or reparameterized) of a family whose
  module declares `peft_modules`; UserError for any other model."""
  paths = node_paths(tree)
  for fam in FAMILY_MODULES:
    found = fam.peft_modules(paths) if hasattr(fam, "peft_modules") else None
    if found is not None:
      ours, prefix = found
      return Modules(ours, prefix, fam.BACKBONE_PREFIX)
  if "embed/position" in paths and "ln_final" in paths:
    raise UserError("PEFT adapters are supported for BERT, Llama-family and T5 models: GPT-2 "
                    "fuses query, key and value into one c_attn module, which per-projection "
                    "adapters do not map onto (docs/peft.md)")
  raise UserError("these parameters are not a BERT's (embed/ln, block_0/attn/query), a "
                  "Llama-family decoder's (block_0/mlp/fc_gate, ln_final) or a T5's "
                  "(encoder/, decoder/); PEFT adapters are supported for those")
