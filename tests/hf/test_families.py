"""Which Hugging Face family the exporter writes a model as, asked of each family."""

import dataclasses

import pytest

from reparam_jax.errors import UserError
from reparam_jax.hf import bert, exporting_family, gemma, gpt2, llama, t5
from reparam_jax.models import PRESETS, TransformerConfig


def _cfg(preset: str, **changes) -> TransformerConfig:
  return dataclasses.replace(TransformerConfig(**PRESETS[preset]), **changes)


def test_each_preset_exports_as_its_family():
  assert exporting_family(_cfg("gpt2_small"), False) is gpt2
  # A head width given explicitly, equal to the even split, is still GPT-2's.
  assert exporting_family(_cfg("gpt2_small", head_size=64), False) is gpt2
  assert exporting_family(_cfg("bert_base"), False) is bert
  for preset in ("smollm2_135m", "qwen2_5_0_5b", "llama3_1_8b"):
    assert exporting_family(_cfg(preset), False) is llama
  assert exporting_family(_cfg("gemma_2b"), False) is gemma
  assert exporting_family(_cfg("t5_small"), True) is t5


def test_a_model_no_family_fits_names_each_familys_first_misfit():
  with pytest.raises(UserError, match=r"gpt2: model.head_size=48 \(needs embed_dim // num_heads\)"
                     r"; bert: model.head_size=48 .*; llama: model.norm='layer' .*; "
                     r"gemma: model.norm='layer' .*; t5: not an encoder–decoder\)$"):
    exporting_family(_cfg("gpt2_small", head_size=48), False)
  with pytest.raises(UserError, match=r"llama: model.qkv_bias=True with use_bias=True"):
    exporting_family(_cfg("qwen2_5_0_5b", use_bias=True), False)


def test_llama_and_gemma_each_need_their_own_embedding_scale_and_activation():
  """The two share tensor names; embed_scale and the MLP's activation tell them apart, so
  neither exports as the other."""
  for changes, misfits in [
      (dict(embed_scale=True), r"llama: model.embed_scale=True \(needs False\); gemma: "
                               r"model.activation='silu' \(needs 'gelu'\)"),
      (dict(activation="gelu", gelu_approximate=True),
       r"llama: model.activation='gelu' \(needs 'silu'\); gemma: model.embed_scale=False"),
      (dict(activation="gelu", gelu_approximate=False, embed_scale=True),
       r"gemma: model.gelu_approximate=False \(needs True\)")]:
    with pytest.raises(UserError, match=misfits):
      exporting_family(_cfg("smollm2_135m", **changes), False)
  with pytest.raises(UserError, match=r"gemma: model.embed_scale=False \(needs True\)"):
    exporting_family(_cfg("gemma_2b", embed_scale=False), False)
  with pytest.raises(UserError, match=r"gemma: model.qkv_bias=True \(needs False\)"):
    exporting_family(_cfg("gemma_2b", qkv_bias=True), False)
