"""Gemma (v1; `model_type` gemma: GemmaForCausalLM) ↔ the project's Transformer.

Gemma's tensors have the Llama family's names and shapes (hf/llama.py's table, read here
through llama's `import_params` / `export_params`); the model differs in four ways, each
a `TransformerConfig` field, so one decoder runs both:

  Gemma                                        project
  embeddings × √hidden_size in the model dtype   embed_scale=True (× √embed_dim, compute dtype)
  GeGLU: gelu_pytorch_tanh(x W_gate) ⊙ x W_up    activation="gelu", gelu_approximate=True
  RMSNorm x̂ · (1 + w), w stored zero-centred    norm="rms", scale = 1 + w (folded at import)
  tie_word_embeddings defaults to true          tie_embeddings

The norms are folded in float32, as transformers computes 1 + w: import stores
scale = 1 + w, export writes w = scale − 1.  scale − 1 is exact for scale ≥ ½, so
ours → HF → ours is bit-exact there; HF → ours → HF is bit-exact where 1 + w is (a
bfloat16 w, as the published checkpoints store them, that is 0 or of magnitude ≥ 2⁻¹⁶)
and otherwise within half an ulp of 1 (2⁻²⁴).

PEFT module names are the Llama table's: llama.peft_modules answers for a Gemma's
parameter tree too (the tree is the same), so this module declares none.

Gemma 2 and 3 (`model_type` gemma2, gemma3: logit soft-capping, sandwich norms,
alternating sliding/global layers) are not read: their `model_type` is not registered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf import llama
from reparam_jax.hf.common import Flat, Tensors, first_misfit, get

MODEL_TYPE = "gemma"
BACKBONE_PREFIX = llama.BACKBONE_PREFIX
ARCHITECTURES = ("GemmaForCausalLM",)
# transformers 5 reads `hidden_act` and maps the legacy "gelu" of the first releases to the
# tanh form; transformers 4 reads `hidden_activation` (None: the tanh form) instead.
_TANH_GELU = ("gelu_pytorch_tanh", "gelu")
# Project paths of the RMSNorm scales, stored by Gemma as scale − 1.
_NORM_SCALES = tuple(f"{ours}/scale" for _, ours in llama._NORMS)


def _is_norm_scale(path: str) -> bool:
  return path == "ln_final/scale" or path.endswith(_NORM_SCALES)


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """`TransformerConfig` keyword arguments from a Gemma config.json."""
  for key in ("hidden_act", "hidden_activation"):
    act = hf.get(key)
    if act is not None and act not in _TANH_GELU:
      raise UserError(f"config.json: {key}={act!r} is not supported (Gemma has GeGLU: "
                      "gelu_pytorch_tanh)")
  if get(hf, "attention_bias", False):
    raise UserError("config.json: attention_bias=true is not supported for gemma (biases on "
                    "the attention projections only)")
  if get(hf, "use_bidirectional_attention", False):
    raise UserError("config.json: use_bidirectional_attention=true is not supported (causal "
                    "decoders only)")
  heads = int(hf["num_attention_heads"])
  d = int(hf["hidden_size"])
  head_dim = int(get(hf, "head_dim", d // heads))
  return dict(
      vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads, num_kv_heads=int(get(hf, "num_key_value_heads", heads)),
      embed_dim=d, mlp_dim=int(hf["intermediate_size"]),
      head_size=0 if head_dim == d // heads else head_dim,
      max_len=int(get(hf, "max_position_embeddings", 8192)), causal=True, pre_norm=True,
      norm="rms", activation="gelu", gelu_approximate=True, mlp_gated=True,
      embed_scale=True, use_bias=False,
      layer_norm_eps=float(get(hf, "rms_norm_eps", 1e-6)),
      tie_embeddings=bool(get(hf, "tie_word_embeddings", True)),
      attention_dropout=float(get(hf, "attention_dropout", 0.0)),
      **llama._rope_fields(hf))


heads_of = llama.heads_of


def import_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], cfg: Any,
                  heads: dict[str, Any], where: str) -> tuple[Flat, Tensors]:
  out, src = llama.import_params(tensors, hf, cfg, heads, where)
  for path in out:
    if _is_norm_scale(path):  # transformers' own float32 1 + w
      out[path] = np.float32(1.0) + np.asarray(out[path], np.float32)
  return out, src


def export_params(flat: Flat, cfg: Any) -> dict[str, Any]:
  """GemmaForCausalLM tensors from project params."""
  zero_centred = {path: flat[path] - np.float32(1.0) if _is_norm_scale(path) else flat[path]
                  for path in flat}
  return llama.export_params(zero_centred, cfg)


# What a model must be to export as Gemma: field → required value.  embed_scale and the
# tanh GELU tell it from a Llama (embed_scale=False, silu), which asks first.
_REQUIRED = {"causal": True, "pre_norm": True, "norm": "rms", "activation": "gelu",
             "gelu_approximate": True, "mlp_gated": True, "embed_scale": True, "rope": True,
             "use_bias": False, "qkv_bias": False, "sliding_window": 0,
             "relative_buckets": 0, "sinusoidal": False, "attention_scale": True,
             "tied_logits_scale": False, "embed_proj_dim": 0, "share_layers": False,
             "layer_dims": (), "type_vocab_size": 0, "embed_norm": False, "pooler": False,
             "num_decoder_layers": 0}


def fits(cfg: Any, encoder_decoder: bool) -> str:
  """"" if `cfg` exports as Gemma, else the first field that does not fit."""
  if encoder_decoder:
    return "an encoder–decoder"
  return first_misfit(cfg, _REQUIRED)


def hf_config(cfg: Any, heads: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
  """The config.json of `cfg` (fields of `base`, the imported one, kept)."""
  del heads
  out = dict(base or {})
  for stale in ("rope_parameters", "rope_scaling", "rope_theta"):
    out.pop(stale, None)
  out.update(
      model_type=MODEL_TYPE, architectures=list(ARCHITECTURES), vocab_size=cfg.vocab_size,
      hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
      # Both names: transformers 4 reads hidden_activation, transformers 5 hidden_act.
      hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
      max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.layer_norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_base,
      rope_scaling=llama._rope_scaling(cfg),
      attention_bias=False, attention_dropout=cfg.attention_dropout)
  return out
