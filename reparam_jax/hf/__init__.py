"""Hugging Face model folders: reading them, and the GPT-2 / BERT / T5 mapping tables.

`FAMILIES` maps a config.json `model_type` to its mapping module, which
provides `model_fields(hf_config)`, `heads_of(names, hf_config)`,
`import_params(...)`, `export_params(...)` and `hf_config(...)`; optionally
`fields_with_tensors(fields, tensors)` (config fields only the weights tell)
and `ENCODER_DECODER = True` (the model is models/seq2seq.py's EncoderDecoder,
for the seq2seq task).
"""

from __future__ import annotations

from types import ModuleType

from reparam_jax.errors import UserError
from reparam_jax.hf import bert, gpt2, t5

FAMILIES: dict[str, ModuleType] = {gpt2.MODEL_TYPE: gpt2, bert.MODEL_TYPE: bert,
                                   t5.MODEL_TYPE: t5}


def family(model_type: str, where: str) -> ModuleType:
  if model_type not in FAMILIES:
    raise UserError(f"{where}: model_type {model_type!r} is not supported; supported: "
                    f"{', '.join(sorted(FAMILIES))}")
  return FAMILIES[model_type]


def is_encoder_decoder(fam: ModuleType) -> bool:
  return bool(getattr(fam, "ENCODER_DECODER", False))
