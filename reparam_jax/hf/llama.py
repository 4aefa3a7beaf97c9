"""The Llama family (`model_type` llama, qwen2, mistral: LlamaForCausalLM,
Qwen2ForCausalLM, MistralForCausalLM) ↔ the project's Transformer.

  HF name (prefix `model.` dropped)              project path                  note
  embed_tokens.weight [V, D]                     embed/token/embedding
  layers.{i}.input_layernorm.weight              block_{i}/ln_attn/scale       RMSNorm
  layers.{i}.self_attn.q_proj.{weight, bias}     block_{i}/attn/query/{kernel, bias}
  layers.{i}.self_attn.k_proj, v_proj            block_{i}/attn/key, value     num_kv_heads heads
  layers.{i}.self_attn.o_proj                    block_{i}/attn/out
  layers.{i}.post_attention_layernorm.weight     block_{i}/ln_mlp/scale
  layers.{i}.mlp.gate_proj                       block_{i}/mlp/fc_in           silu(x W_gate)
  layers.{i}.mlp.up_proj                         block_{i}/mlp/fc_gate         ⊙ x W_up
  layers.{i}.mlp.down_proj                       block_{i}/mlp/fc_out
  norm.weight                                    ln_final/scale
  lm_head.weight [V, D]                          lm_head/kernel [D, V]         only when untied

PyTorch's `Linear` stores `[out, in]`; the project's kernels are `[in, out]`, so
every projection is transposed.  Biases: Llama's `attention_bias` / `mlp_bias`
(all projections: `use_bias`), Qwen 2's on q/k/v only (`qkv_bias`), Mistral none.
RoPE: `rope_theta` and the scalings of models/rope.py, read from `rope_scaling`
(transformers 4) or `rope_parameters` (transformers 5).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf.common import (
  Flat,
  Tensors,
  first_misfit,
  get,
  rename_keys,
  stack_modules,
  take_buffers,
  take_lm_head,
)

MODEL_TYPE = "llama"
BACKBONE_PREFIX = "model."  # *ForCausalLM's decoder module; LlamaModel has none
MODEL_TYPES = ("llama", "qwen2", "mistral")
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_ARCHITECTURE = dict(zip(MODEL_TYPES, ARCHITECTURES))
_BUFFERS = re.compile(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_PROJECTIONS = (("self_attn.q_proj", "attn/query"), ("self_attn.k_proj", "attn/key"),
                ("self_attn.v_proj", "attn/value"), ("self_attn.o_proj", "attn/out"),
                ("mlp.gate_proj", "mlp/fc_in"), ("mlp.up_proj", "mlp/fc_gate"),
                ("mlp.down_proj", "mlp/fc_out"))
_NORMS = (("input_layernorm", "ln_attn"), ("post_attention_layernorm", "ln_mlp"))


def _rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """RoPE's θ and scaling from either transformers version's config fields."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  spec = {**scaling, **params}
  theta = float(spec.get("rope_theta") or get(hf, "rope_theta", 10000.0))
  kind = spec.get("rope_type") or spec.get("type") or "default"
  fields: dict[str, Any] = {"rope": True, "rope_base": theta}
  if kind == "default":
    return fields
  if kind not in ("linear", "llama3", "yarn"):
    raise UserError(f"config.json: rope_scaling type {kind!r} is not supported (supported: "
                    "linear, llama3, yarn)")
  if kind == "yarn" and spec.get("truncate") is False:
    raise UserError("config.json: rope_scaling truncate=false is not supported (yarn with "
                    "its default truncated correction range only)")
  if kind == "yarn" and (spec.get("mscale") or spec.get("mscale_all_dim")):
    raise UserError("config.json: rope_scaling mscale / mscale_all_dim are not supported")
  original = spec.get("original_max_position_embeddings")
  factor = spec.get("factor")
  if factor is None and kind == "yarn" and original:
    factor = hf["max_position_embeddings"] / original
  fields.update(rope_scaling=kind, rope_factor=float(factor),
                rope_original_max_len=int(original or 0))
  if kind == "llama3":
    fields.update(rope_low_freq_factor=float(spec["low_freq_factor"]),
                  rope_high_freq_factor=float(spec["high_freq_factor"]))
  if kind == "yarn":
    fields.update(rope_beta_fast=float(spec.get("beta_fast") or 32),
                  rope_beta_slow=float(spec.get("beta_slow") or 1),
                  rope_attention_factor=float(spec.get("attention_factor") or 0.0))
  return fields


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """`TransformerConfig` keyword arguments from a Llama / Qwen 2 / Mistral config.json."""
  kind = hf.get("model_type")
  act = get(hf, "hidden_act", "silu")
  if act != "silu":
    raise UserError(f"config.json: hidden_act={act!r} is not supported (the {kind} family "
                    "has SwiGLU: silu)")
  heads = int(hf["num_attention_heads"])
  d = int(hf["hidden_size"])
  head_dim = int(get(hf, "head_dim", d // heads))
  fields: dict[str, Any] = dict(
      vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads, num_kv_heads=int(get(hf, "num_key_value_heads", heads)),
      embed_dim=d, mlp_dim=int(hf["intermediate_size"]),
      head_size=0 if head_dim == d // heads else head_dim,
      max_len=int(get(hf, "max_position_embeddings", 2048)), causal=True, pre_norm=True,
      norm="rms", activation="silu", mlp_gated=True,
      layer_norm_eps=float(get(hf, "rms_norm_eps", 1e-6)),
      tie_embeddings=bool(get(hf, "tie_word_embeddings", False)),
      attention_dropout=float(get(hf, "attention_dropout", 0.0)),
      **_rope_fields(hf))
  if kind == "qwen2":
    fields.update(use_bias=False, qkv_bias=True)
    if get(hf, "use_sliding_window", False):
      raise UserError("config.json: use_sliding_window=true is not supported for qwen2 (its "
                      "window applies to some layers only)")
  else:
    attention_bias = bool(get(hf, "attention_bias", False))
    mlp_bias = bool(get(hf, "mlp_bias", False))
    if attention_bias != mlp_bias:
      raise UserError(f"config.json: attention_bias={attention_bias} with mlp_bias={mlp_bias} "
                      "is not supported (biases on all projections or on none)")
    fields["use_bias"] = attention_bias
  if kind == "mistral" and get(hf, "sliding_window", 0):
    fields["sliding_window"] = int(hf["sliding_window"])
  return fields


def heads_of(tensors: dict[str, np.ndarray], hf: dict[str, Any]) -> dict[str, Any]:
  del tensors, hf
  return {}  # the LM head is the Transformer's own output layer


def _has_bias(cfg: Any, ours: str) -> bool:
  return cfg.use_bias or (cfg.qkv_bias and ours in ("attn/query", "attn/key", "attn/value"))


def import_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], cfg: Any,
                  heads: dict[str, Any], where: str) -> tuple[Flat, Tensors]:
  del hf, heads
  src = Tensors(rename_keys(tensors, (BACKBONE_PREFIX,)), where)
  out: Flat = {}

  def put(path: str, name: str, value: np.ndarray | None = None) -> None:
    out[path] = src.take(name) if value is None else value
    src.origin[path] = name

  put("embed/token/embedding", "embed_tokens.weight")
  for i in range(cfg.num_layers):
    h, b = f"layers.{i}.", f"block_{i}/"
    for hf_name, ours in _NORMS:
      put(f"{b}{ours}/scale", f"{h}{hf_name}.weight")
    for hf_name, ours in _PROJECTIONS:
      put(f"{b}{ours}/kernel", f"{h}{hf_name}.weight", src.take(f"{h}{hf_name}.weight").T)
      if _has_bias(cfg, ours):
        put(f"{b}{ours}/bias", f"{h}{hf_name}.bias")
  put("ln_final/scale", "norm.weight")
  take_lm_head(src, put, out["embed/token/embedding"], cfg.tie_embeddings,
               "embed_tokens.weight", where)
  take_buffers(src, _BUFFERS)
  return out, src


def export_params(flat: Flat, cfg: Any) -> dict[str, Any]:
  """Hugging Face *ForCausalLM tensors from project params."""
  t: dict[str, Any] = {f"{BACKBONE_PREFIX}embed_tokens.weight": flat["embed/token/embedding"]}
  for i in range(cfg.num_layers):
    h, b = f"{BACKBONE_PREFIX}layers.{i}.", f"block_{i}/"
    for hf_name, ours in _NORMS:
      t[f"{h}{hf_name}.weight"] = flat[f"{b}{ours}/scale"]
    for hf_name, ours in _PROJECTIONS:
      t[f"{h}{hf_name}.weight"] = flat[f"{b}{ours}/kernel"].T
      if _has_bias(cfg, ours):
        t[f"{h}{hf_name}.bias"] = flat[f"{b}{ours}/bias"]
  t[f"{BACKBONE_PREFIX}norm.weight"] = flat["ln_final/scale"]
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = flat["lm_head/kernel"].T
  return t


def peft_modules(paths: set[str]) -> tuple[dict[str, str], str] | None:
  """(project module path → HF module name as *ForCausalLM writes it, its backbone prefix)
  of a Llama-family parameter tree's `node_paths`, or None if it is not one's: the
  projections of the table above, which import and export read too."""
  if not ("block_0/mlp/fc_gate/kernel" in paths and "ln_final" in paths
          and "embed/position" not in paths):
    return None
  ours = stack_modules(paths, _PROJECTIONS, BACKBONE_PREFIX + "layers.{i}.")
  return {k: v for k, v in ours.items() if f"{k}/kernel" in paths}, BACKBONE_PREFIX


# What a model must be to export as this family: field → required value.
_REQUIRED = {"causal": True, "pre_norm": True, "norm": "rms", "activation": "silu",
             "mlp_gated": True, "rope": True, "relative_buckets": 0, "sinusoidal": False,
             "attention_scale": True, "embed_scale": False, "tied_logits_scale": False,
             "embed_proj_dim": 0, "share_layers": False, "layer_dims": (),
             "type_vocab_size": 0, "embed_norm": False, "pooler": False,
             "num_decoder_layers": 0}


def fits(cfg: Any, encoder_decoder: bool) -> str:
  """"" if `cfg` exports as this family, else the first field that does not fit."""
  if encoder_decoder:
    return "an encoder–decoder"
  misfit = first_misfit(cfg, _REQUIRED)
  if misfit:
    return misfit
  if cfg.use_bias and cfg.qkv_bias:
    return "model.qkv_bias=True with use_bias=True (Qwen 2 has q/k/v biases only)"
  if cfg.sliding_window and (cfg.use_bias or cfg.qkv_bias):
    return "model.sliding_window with biases (Mistral has none)"
  return ""


def _model_type(cfg: Any, base: dict[str, Any]) -> str:
  if cfg.qkv_bias:
    return "qwen2"
  if cfg.sliding_window:
    return "mistral"
  kept = base.get("model_type")
  return kept if kept in MODEL_TYPES and not cfg.use_bias else "llama"


def _rope_scaling(cfg: Any) -> dict[str, Any] | None:
  if not cfg.rope_scaling:
    return None
  out: dict[str, Any] = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
  if cfg.rope_original_max_len:
    out["original_max_position_embeddings"] = cfg.rope_original_max_len
  if cfg.rope_scaling == "llama3":
    out.update(low_freq_factor=cfg.rope_low_freq_factor,
               high_freq_factor=cfg.rope_high_freq_factor)
  if cfg.rope_scaling == "yarn":  # transformers' defaults left out, as its configs do
    for key, value, default in (("beta_fast", cfg.rope_beta_fast, 32.0),
                                ("beta_slow", cfg.rope_beta_slow, 1.0),
                                ("attention_factor", cfg.rope_attention_factor, 0.0)):
      if value != default:
        out[key] = value
  return out


def hf_config(cfg: Any, heads: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
  """The config.json of `cfg` (fields of `base`, the imported one, kept)."""
  del heads
  out = dict(base or {})
  kind = _model_type(cfg, out)
  for stale in ("rope_parameters", "rope_scaling", "rope_theta"):
    out.pop(stale, None)
  out.update(
      model_type=kind, architectures=[_ARCHITECTURE[kind]], vocab_size=cfg.vocab_size,
      hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
      max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.layer_norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_base,
      rope_scaling=_rope_scaling(cfg), attention_dropout=cfg.attention_dropout)
  if kind == "llama":
    out.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
  if kind == "qwen2":
    out.update(use_sliding_window=False)
  if kind == "mistral":
    out.update(sliding_window=cfg.sliding_window or None)
  return out
