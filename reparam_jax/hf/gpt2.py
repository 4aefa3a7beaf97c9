"""GPT-2 (`model_type: gpt2`, GPT2LMHeadModel / GPT2Model) ↔ the project's Transformer.

  HF name (prefix `transformer.` dropped)    project path                 note
  wte.weight [V, D]                          embed/token/embedding
  wpe.weight [P, D]                          embed/position/embedding
  h.{i}.ln_1.{weight,bias}                   block_{i}/ln_attn/{scale,bias}
  h.{i}.attn.c_attn.{weight [D, 3D], bias}   block_{i}/attn/{query,key,value}/{kernel,bias}
                                             (the fused q|k|v split along the output axis)
  h.{i}.attn.c_proj                          block_{i}/attn/out
  h.{i}.ln_2                                 block_{i}/ln_mlp
  h.{i}.mlp.c_fc, h.{i}.mlp.c_proj           block_{i}/mlp/fc_in, fc_out
  ln_f                                       ln_final
  lm_head.weight [V, D]                      lm_head/kernel [D, V]        only when untied

GPT-2's `Conv1D` stores weights `[in, out]`, the project's layout, so
kernels copy over unchanged.  PEFT adapters (hf/peft.py) name the same modules
(`peft_modules`): `c_attn` is one module for three project kernels, its output
columns q|k|v in that order.  The causal-mask buffers (`attn.bias`,
`attn.masked_bias`) of old checkpoints are not parameters and are skipped.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf.common import (
  Flat,
  Tensors,
  get,
  plain_misfit,
  rename_keys,
  stack_modules,
  take_buffers,
  take_lm_head,
)

MODEL_TYPE = "gpt2"
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
BACKBONE_PREFIX = "transformer."  # GPT2LMHeadModel's backbone module; GPT2Model has none
PEFT_FAN_IN_FAN_OUT = True  # Conv1D weights are [in, out]: PEFT's fan_in_fan_out
# The Conv1D modules of one block as PEFT names them (HF module, project path): the
# fused `attn.c_attn` appears once per project kernel, in the order of its output
# column blocks (hf/peft_names.py reads a repeated name as one fused module).
PEFT_LINEARS = (("attn.c_attn", "attn/query"), ("attn.c_attn", "attn/key"),
                ("attn.c_attn", "attn/value"), ("attn.c_proj", "attn/out"),
                ("mlp.c_fc", "mlp/fc_in"), ("mlp.c_proj", "mlp/fc_out"))


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """`TransformerConfig` keyword arguments from a GPT-2 config.json."""
  act = get(hf, "activation_function", "gelu_new")
  if act not in _TANH_GELUS + ("gelu",):
    raise UserError(f"config.json: activation_function={act!r} is not supported (the "
                    "Transformer has GELU only: gelu_new, gelu_pytorch_tanh or gelu)")
  for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                  ("add_cross_attention", False)):
    if get(hf, key, ok) != ok:
      raise UserError(f"config.json: {key}={hf[key]} is not supported (only {ok})")
  d = int(hf["n_embd"])
  return dict(
      vocab_size=int(hf["vocab_size"]), num_layers=int(hf["n_layer"]),
      num_heads=int(hf["n_head"]), embed_dim=d, mlp_dim=int(get(hf, "n_inner", 4 * d)),
      max_len=int(hf["n_positions"]), causal=True, pre_norm=True,
      tie_embeddings=bool(get(hf, "tie_word_embeddings", True)),
      gelu_approximate=act in _TANH_GELUS,
      layer_norm_eps=float(get(hf, "layer_norm_epsilon", 1e-5)),
      embed_dropout=float(get(hf, "embd_pdrop", 0.1)),
      attention_dropout=float(get(hf, "attn_pdrop", 0.1)),
      residual_dropout=float(get(hf, "resid_pdrop", 0.1)))


def heads_of(tensors: dict[str, np.ndarray], hf: dict[str, Any]) -> dict[str, Any]:
  del tensors, hf
  return {}  # the LM head is the tied (or untied) output layer of the Transformer itself


def import_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], cfg: Any,
                  heads: dict[str, Any], where: str) -> tuple[Flat, Tensors]:
  del heads
  src = Tensors(rename_keys(tensors, ("transformer.",)), where)
  out: Flat = {}

  def put(path: str, name: str, value: np.ndarray | None = None) -> None:
    out[path] = src.take(name) if value is None else value
    src.origin[path] = name

  put("embed/token/embedding", "wte.weight")
  put("embed/position/embedding", "wpe.weight")
  d = cfg.embed_dim
  for i in range(cfg.num_layers):
    h, b = f"h.{i}.", f"block_{i}/"
    for ln, ours in (("ln_1", "ln_attn"), ("ln_2", "ln_mlp")):
      put(f"{b}{ours}/scale", f"{h}{ln}.weight")
      put(f"{b}{ours}/bias", f"{h}{ln}.bias")
    w, bias = src.take(f"{h}attn.c_attn.weight"), src.take(f"{h}attn.c_attn.bias")
    if w.shape != (d, 3 * d) or bias.shape != (3 * d,):
      raise UserError(f"{where}: parameter {h}attn.c_attn.weight has shape {w.shape} (bias "
                      f"{bias.shape}) but config.json implies ({d}, {3 * d}) (bias ({3 * d},))")
    for j, name in enumerate(("query", "key", "value")):
      put(f"{b}attn/{name}/kernel", f"{h}attn.c_attn.weight", w[:, j * d:(j + 1) * d])
      put(f"{b}attn/{name}/bias", f"{h}attn.c_attn.bias", bias[j * d:(j + 1) * d])
    for hf_name, ours in (("attn.c_proj", "attn/out"), ("mlp.c_fc", "mlp/fc_in"),
                          ("mlp.c_proj", "mlp/fc_out")):
      put(f"{b}{ours}/kernel", f"{h}{hf_name}.weight")
      put(f"{b}{ours}/bias", f"{h}{hf_name}.bias")
  put("ln_final/scale", "ln_f.weight")
  put("ln_final/bias", "ln_f.bias")
  take_lm_head(src, put, out["embed/token/embedding"], cfg.tie_embeddings, "wte.weight", where)
  take_buffers(src, _BUFFERS)
  return out, src


def export_params(flat: Flat, cfg: Any) -> dict[str, np.ndarray]:
  """Hugging Face GPT2LMHeadModel tensors from project params."""
  t: dict[str, np.ndarray] = {"transformer.wte.weight": flat["embed/token/embedding"],
                              "transformer.wpe.weight": flat["embed/position/embedding"]}
  for i in range(cfg.num_layers):
    h, b = f"transformer.h.{i}.", f"block_{i}/"
    for ln, ours in (("ln_1", "ln_attn"), ("ln_2", "ln_mlp")):
      t[f"{h}{ln}.weight"] = flat[f"{b}{ours}/scale"]
      t[f"{h}{ln}.bias"] = flat[f"{b}{ours}/bias"]
    qkv = ("query", "key", "value")
    # jnp: the exporter's arrays may be split over several processes (rundir/sharded.py).
    t[f"{h}attn.c_attn.weight"] = jnp.concatenate([flat[f"{b}attn/{n}/kernel"] for n in qkv], 1)
    t[f"{h}attn.c_attn.bias"] = jnp.concatenate([flat[f"{b}attn/{n}/bias"] for n in qkv])
    for hf_name, ours in (("attn.c_proj", "attn/out"), ("mlp.c_fc", "mlp/fc_in"),
                          ("mlp.c_proj", "mlp/fc_out")):
      t[f"{h}{hf_name}.weight"] = flat[f"{b}{ours}/kernel"]
      t[f"{h}{hf_name}.bias"] = flat[f"{b}{ours}/bias"]
  t["transformer.ln_f.weight"] = flat["ln_final/scale"]
  t["transformer.ln_f.bias"] = flat["ln_final/bias"]
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = flat["lm_head/kernel"].T
  return t


def peft_modules(paths: set[str]) -> tuple[dict[str, str], str] | None:
  """(project module path → HF module name as GPT2LMHeadModel writes it, its backbone
  prefix) of a GPT-2 parameter tree's `node_paths`, or None if it is not one's.  query,
  key and value all map to `h.{i}.attn.c_attn` (PEFT_LINEARS)."""
  if not ("embed/position" in paths and "ln_final" in paths and "embed/ln" not in paths
          and "block_0/attn/query/kernel" in paths):
    return None
  ours = stack_modules(paths, PEFT_LINEARS, BACKBONE_PREFIX + "h.{i}.")
  return {k: v for k, v in ours.items() if f"{k}/kernel" in paths}, BACKBONE_PREFIX


def fits(cfg: Any, encoder_decoder: bool) -> str:
  """"" if `cfg` exports as this family, else the first field that does not fit."""
  if encoder_decoder:
    return "an encoder–decoder"
  return plain_misfit(cfg, causal=True, pre_norm=True, type_vocab_size=0,
                      embed_norm=False, pooler=False)


def hf_config(cfg: Any, heads: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
  """A GPT-2 config.json for `cfg` (fields of `base`, the imported one, kept)."""
  del heads
  out = dict(base or {})
  out.update(
      model_type=MODEL_TYPE, architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
      n_positions=cfg.max_len, n_embd=cfg.embed_dim, n_layer=cfg.num_layers,
      n_head=cfg.num_heads, n_inner=None if cfg.mlp_dim == 4 * cfg.embed_dim else cfg.mlp_dim,
      activation_function="gelu_new" if cfg.gelu_approximate else "gelu",
      layer_norm_epsilon=cfg.layer_norm_eps, tie_word_embeddings=cfg.tie_embeddings,
      embd_pdrop=cfg.embed_dropout, attn_pdrop=cfg.attention_dropout,
      resid_pdrop=cfg.residual_dropout, scale_attn_weights=True,
      scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
  out.setdefault("bos_token_id", 50256 if cfg.vocab_size > 50256 else None)
  out.setdefault("eos_token_id", out["bos_token_id"])
  return out
