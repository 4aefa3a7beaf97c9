"""Models: the Transformer, its leaf layers and published presets."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from reparam_jax.models.config import TransformerConfig
from reparam_jax.models.presets import PRESETS
from reparam_jax.models.transformer import Transformer

__all__ = ["PRESETS", "Transformer", "TransformerConfig", "transformer_config"]


def transformer_config(model_cfg: Mapping[str, Any]) -> TransformerConfig:
  """`TransformerConfig` from a config's `model` section.

  `model.preset` (optional) names an entry of `PRESETS`; every other key of
  the section overrides the preset, `base_config`'s defaults included: a config
  file chooses a preset with `config.base.use_preset`, which writes its fields
  into the section.
  """
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  kwargs = dict(PRESETS[model_cfg["preset"]]) if model_cfg.get("preset") else {}
  kwargs.update({k: v for k, v in model_cfg.items() if k in fields and v is not None})
  return TransformerConfig(**kwargs)
