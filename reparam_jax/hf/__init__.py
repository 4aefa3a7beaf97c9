"""Hugging Face model folders: reading them, and the families' mapping tables.

A family is one module (`FAMILY_MODULES`, in the order the exporter asks them),
which provides `MODEL_TYPE` (and `MODEL_TYPES`, the config.json `model_type`s it
reads, if several), `ARCHITECTURES`, `model_fields(hf_config)`,
`heads_of(names, hf_config)`, `import_params(...)`, `export_params(...)`,
`hf_config(...)` and `fits(cfg, encoder_decoder)` ("" where a model exports as
the family, else the field that does not fit); optionally
`fields_with_tensors(fields, tensors)` (config fields only the weights tell)
and `ENCODER_DECODER = True` (the model is models/seq2seq.py's EncoderDecoder,
for the seq2seq task).  `FAMILIES` maps each `model_type` to its module.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from reparam_jax.errors import UserError
from reparam_jax.hf import bert, gemma, gpt2, llama, t5

FAMILY_MODULES: tuple[ModuleType, ...] = (gpt2, bert, llama, gemma, t5)
FAMILIES: dict[str, ModuleType] = {
    kind: fam for fam in FAMILY_MODULES for kind in getattr(fam, "MODEL_TYPES", (fam.MODEL_TYPE,))}


def family(model_type: str, where: str) -> ModuleType:
  if model_type not in FAMILIES:
    raise UserError(f"{where}: model_type {model_type!r} is not supported; supported: "
                    f"{', '.join(sorted(FAMILIES))}")
  return FAMILIES[model_type]


def is_encoder_decoder(fam: ModuleType) -> bool:
  return bool(getattr(fam, "ENCODER_DECODER", False))


def _per_layer_misfit(cfg: Any, fam: ModuleType) -> str:
  """Structurally pruned shapes (models/config.py) a family's config.json cannot hold: per-layer
  MLP widths in every family; per-layer heads except in BERT (`pruned_heads`)."""
  if getattr(cfg, "layer_mlp_dims", ()):
    return f"model.layer_mlp_dims={cfg.layer_mlp_dims!r} (needs one intermediate_size: ())"
  if getattr(cfg, "layer_heads", ()) and fam.MODEL_TYPE != "bert":
    return f"model.layer_heads={cfg.layer_heads!r} (needs ())"
  return ""


def exporting_family(cfg: Any, encoder_decoder: bool) -> ModuleType:
  """The first family `cfg` exports as; UserError naming, per family, what does not fit."""
  misfits = []
  for fam in FAMILY_MODULES:
    misfit = _per_layer_misfit(cfg, fam) or fam.fits(cfg, encoder_decoder)
    if not misfit:
      return fam
    misfits.append(f"{fam.MODEL_TYPE}: {misfit}")
  raise UserError("this model fits no Hugging Face family it could be exported as ("
                  + "; ".join(misfits) + ")")
