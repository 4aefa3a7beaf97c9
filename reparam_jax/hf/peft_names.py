"""Which Hugging Face module each of the project's linear layers is, for PEFT adapters.

PEFT names an adapter tensor after the `nn.Module` it wraps, relative to the
`transformers` model class the base was loaded as, behind `base_model.model.`:

  base_model.model.encoder.layer.0.attention.self.query.lora_A.weight        (BertModel)
  base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight   (BertFor*)
  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight             (LlamaForCausalLM)

  base_model.model.transformer.h.0.attn.c_attn.lora_A.weight                 (GPT2LMHeadModel)

Each family's module (hf/bert.py, hf/gpt2.py, hf/llama.py, hf/t5.py) gives the
names from the same table its import and export read (`peft_modules`), built
from the parameter tree (a layer the tree lacks is not listed), so it needs no
model config.  A name given to several project modules is one fused HF module
(GPT-2's `c_attn` = query|key|value): its output columns are theirs, in the
table's order (`Modules.fused`).
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
  fan_in_fan_out: bool = False  # the HF modules store [in, out] (GPT-2's Conv1D)

  def hf_name(self, path: str) -> str:
    if path not in self.ours:
      raise UserError(f"parameter {path}/kernel has no linear module PEFT can adapt "
                      f"(adaptable: {', '.join(sorted(self.ours)[:6])}, ...)")
    return self.ours[path]

  def our_paths(self, hf_name: str) -> tuple[str, ...] | None:
    """The project paths of a HF module name, with or without the backbone prefix: one
    path, or a fused module's paths in the order of its output column blocks."""
    table: dict[str, tuple[str, ...]] = {}
    for path, name in self.ours.items():
      table[name] = table.get(name, ()) + (path,)
    # An adapter saved on BertModel loads onto a BertFor* base and vice versa (PEFT
    # itself would not, but the modules are the same).
    pre = self.family_prefix
    for name in (hf_name, f"{pre}{hf_name}" if pre else None,
                 hf_name[len(pre):] if pre and hf_name.startswith(pre) else None):
      if name in table:
        return table[name]
    return None

  def our_path(self, hf_name: str) -> str | None:
    """The project path of a HF module name that is one project module (not fused)."""
    paths = self.our_paths(hf_name)
    return paths[0] if paths is not None and len(paths) == 1 else None

  def fused(self, hf_name: str) -> tuple[str, ...]:
    """The project paths that share HF module `hf_name` (one path where it is not fused)."""
    return tuple(p for p, n in self.ours.items() if n == hf_name)


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
      return Modules(ours, prefix, fam.BACKBONE_PREFIX,
                     bool(getattr(fam, "PEFT_FAN_IN_FAN_OUT", False)))
  raise UserError("these parameters are not a BERT's (embed/ln, block_0/attn/query), a "
                  "GPT-2's (embed/position, ln_final), a Llama-family decoder's "
                  "(block_0/mlp/fc_gate, ln_final) or a T5's (encoder/, decoder/); PEFT "
                  "adapters are supported for those")
