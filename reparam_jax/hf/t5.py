"""T5 (`model_type: t5`, T5ForConditionalGeneration) ↔ the project's EncoderDecoder.

  HF name ({s} = encoder | decoder)                   project path
  shared.weight [V, D]                                embed/token/embedding
  {s}.embed_tokens.weight                             (tied to shared; checked, dropped)
  {s}.block.0.layer.0.SelfAttention
      .relative_attention_bias.weight [buckets, H]    {s}/rel_bias/embedding
  {s}.block.{i}.layer.0.SelfAttention.{q,k,v,o}       {s}/block_{i}/attn/{query,key,value,out}
  {s}.block.{i}.layer.0.layer_norm                    {s}/block_{i}/ln_attn
  decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o} decoder/block_{i}/cross_attn/...
  decoder.block.{i}.layer.1.layer_norm                decoder/block_{i}/ln_cross
  {s}.block.{i}.layer.{f}.DenseReluDense.wi           {s}/block_{i}/mlp/fc_in
      (gated: wi_0 → fc_in, wi_1 → fc_gate)           (f = 1 in the encoder, 2 in the decoder)
  {s}.block.{i}.layer.{f}.DenseReluDense.wo           {s}/block_{i}/mlp/fc_out
  {s}.block.{i}.layer.{f}.layer_norm                  {s}/block_{i}/ln_mlp
  {s}.final_layer_norm                                {s}/ln_final
  lm_head.weight [V, D]                               lm_head/kernel [D, V]   only when untied

`nn.Linear` weights are `[out, in]` and transposed; there are no biases, and
T5's layer norm is an RMSNorm (`weight` → `scale`).

Tying and the d^-½ output scale are two facts that T5 configs spell
differently by version: transformers 4 reads both off `tie_word_embeddings`
(v1.0: tied and scaled; v1.1: untied and unscaled), transformers 5 always
ties unless the checkpoint holds an `lm_head.weight` that differs from
`shared.weight`, and reads the scale off `scale_decoder_outputs` (falling
back to `tie_word_embeddings`).  So the import reads the scale from the
config and the tying from the tensors, and the export writes a config both
versions read the same way (see `hf_config`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf.common import Flat, Tensors, check_tied, first_misfit, get, stack_modules

MODEL_TYPE = "t5"
ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel")
# Encoder–decoder: importer.build_model makes a models/seq2seq.py EncoderDecoder.
ENCODER_DECODER = True
# In T5's reference checkpoints but unused (cross-attention has no position bias);
# transformers ignores it on load too.
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
# feed_forward_proj's activation → (activation, gelu_approximate) of TransformerConfig.
_ACTIVATIONS = {"relu": ("relu", True), "gelu": ("gelu", False),
                "gelu_python": ("gelu", False), "gelu_new": ("gelu", True),
                "gelu_pytorch_tanh": ("gelu", True), "gelu_fast": ("gelu", True)}
_PROJECTIONS = ("relu", "gated-relu", "gelu", "gated-gelu", "gelu_new", "gated-gelu_new",
                "gelu_pytorch_tanh", "gated-gelu_pytorch_tanh", "gated-gelu_python")


def _activation(hf: dict[str, Any]) -> tuple[str, bool, bool]:
  """(activation, gelu_approximate, gated) of `feed_forward_proj`, as T5Config reads it."""
  proj = get(hf, "feed_forward_proj", "relu")
  parts = str(proj).split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  # T5Config's one special case: "gated-gelu" is the tanh GELU (T5 v1.1).
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  if len(parts) > 2 or (len(parts) == 2 and not gated) or act not in _ACTIVATIONS:
    raise UserError(f"config.json: feed_forward_proj={proj!r} is not supported (supported: "
                    f"{', '.join(_PROJECTIONS)})")
  return (*_ACTIVATIONS[act], gated)


def _scaled_output(hf: dict[str, Any]) -> bool:
  """Whether the decoder output is scaled by d_model^-½ before the LM head."""
  return bool(get(hf, "scale_decoder_outputs", get(hf, "tie_word_embeddings", True)))


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """`TransformerConfig` keyword arguments from a T5 config.json.

  Tying is the config's guess here; `fields_with_tensors` settles it from the weights.
  """
  activation, approximate, gated = _activation(hf)
  if not get(hf, "is_encoder_decoder", True) or get(hf, "is_decoder", False):
    raise UserError("config.json: only the T5 encoder–decoder is supported (is_encoder_decoder"
                    "=true, is_decoder=false)")
  layers = int(hf["num_layers"])
  decoder_layers = int(get(hf, "num_decoder_layers", layers))
  dropout = float(get(hf, "dropout_rate", 0.1))
  fields = dict(
      vocab_size=int(hf["vocab_size"]), num_layers=layers,
      num_decoder_layers=0 if decoder_layers == layers else decoder_layers,
      num_heads=int(hf["num_heads"]), embed_dim=int(hf["d_model"]),
      head_size=int(hf["d_kv"]), mlp_dim=int(hf["d_ff"]),
      # Relative positions have no table to size; n_positions (t5-small's config has it)
      # is the length it was trained at.
      max_len=int(get(hf, "n_positions", 512)), causal=False, pre_norm=True, norm="rms",
      use_bias=False, attention_scale=False,
      relative_buckets=int(get(hf, "relative_attention_num_buckets", 32)),
      relative_max_distance=int(get(hf, "relative_attention_max_distance", 128)),
      activation=activation, mlp_gated=gated,
      tie_embeddings=bool(get(hf, "tie_word_embeddings", True)),
      tied_logits_scale=_scaled_output(hf),
      layer_norm_eps=float(get(hf, "layer_norm_epsilon", 1e-6)),
      embed_dropout=dropout, attention_dropout=dropout, residual_dropout=dropout)
  if activation == "gelu":  # with ReLU gelu_approximate means nothing: left at its default
    fields["gelu_approximate"] = approximate
  return fields


def fields_with_tensors(fields: dict[str, Any], tensors: dict[str, np.ndarray]
                        ) -> dict[str, Any]:
  """`fields` with the tying transformers 5 would load: untied iff the checkpoint has an
  `lm_head.weight` that differs from `shared.weight`.

  An untied head keeps the config's output scale folded into its kernel
  (`import_params`), so `tied_logits_scale` is off there.
  """
  tied = not untied(tensors)
  return dict(fields, tie_embeddings=tied, tied_logits_scale=tied and fields["tied_logits_scale"])


def heads_of(tensors: dict[str, np.ndarray], hf: dict[str, Any]) -> dict[str, Any]:
  del tensors, hf
  return {}  # the LM head is the tied (or untied) output layer of the EncoderDecoder itself


def untied(tensors: dict[str, np.ndarray]) -> bool:
  """Whether the checkpoint's LM head is its own matrix (as transformers 5 decides)."""
  lm, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
  return lm is not None and (shared is None or lm.shape != shared.shape
                             or not np.array_equal(lm, shared))


_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))


def layer_table(stack: str, gated: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(linear modules, RMSNorms) of one block of `stack` ("encoder" or "decoder"), each
  (HF name under `{stack}.block.{i}.layer.`, project path under `{stack}/block_{i}/`):
  the one table import, export and PEFT's module names read."""
  linears = [(f"0.SelfAttention.{h}", f"attn/{o}") for h, o in _ATTENTION]
  norms = [("0.layer_norm", "ln_attn")]
  ff = 1
  if stack == "decoder":  # cross-attention between self-attention and the MLP
    linears += [(f"1.EncDecAttention.{h}", f"cross_attn/{o}") for h, o in _ATTENTION]
    norms.append(("1.layer_norm", "ln_cross"))
    ff = 2
  mlp = (("wi_0", "fc_in"), ("wi_1", "fc_gate")) if gated else (("wi", "fc_in"),)
  linears += [(f"{ff}.DenseReluDense.{h}", f"mlp/{o}") for h, o in (*mlp, ("wo", "fc_out"))]
  norms.append((f"{ff}.layer_norm", "ln_mlp"))
  return linears, norms


def import_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], cfg: Any,
                  heads: dict[str, Any], where: str) -> tuple[Flat, Tensors]:
  del heads
  src = Tensors(tensors, where)
  out: Flat = {}

  def put(path: str, name: str, value: np.ndarray | None = None) -> None:
    out[path] = src.take(name) if value is None else value
    src.origin[path] = name

  def linear(path: str, name: str) -> None:
    put(f"{path}/kernel", f"{name}.weight", src.take(f"{name}.weight").T)

  put("embed/token/embedding", "shared.weight")
  for stack, layers in (("encoder", cfg.num_layers),
                        ("decoder", cfg.num_decoder_layers or cfg.num_layers)):
    check_tied(src, f"{stack}.embed_tokens.weight", out["embed/token/embedding"],
               f"{where}: {{}} differs from shared.weight; T5 stacks with their own embedding "
               "tables are not supported")
    put(f"{stack}/rel_bias/embedding",
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    linears, norms = layer_table(stack, cfg.mlp_gated)
    for i in range(layers):
      h, b = f"{stack}.block.{i}.layer.", f"{stack}/block_{i}/"
      for hf_name, ours in linears:
        linear(b + ours, h + hf_name)
      for hf_name, ours in norms:
        put(f"{b}{ours}/scale", f"{h}{hf_name}.weight")
    put(f"{stack}/ln_final/scale", f"{stack}.final_layer_norm.weight")
  if not cfg.tie_embeddings:
    kernel = src.take("lm_head.weight").T
    if _scaled_output(hf):
      # Untied yet scaled (no stock T5; transformers 5 loads it so): the model scales
      # only a tied head, so the scale moves into the kernel.
      kernel = (kernel * np.float32(cfg.embed_dim ** -0.5)).astype(kernel.dtype)
    put("lm_head/kernel", "lm_head.weight", kernel)
  elif src.has("lm_head.weight"):
    src.take("lm_head.weight")  # tied: fields_with_tensors found it equal to shared.weight
  for name in _UNUSED:
    if src.has(name):
      src.take(name)
  return out, src


def export_params(flat: Flat, cfg: Any) -> dict[str, np.ndarray]:
  """Hugging Face T5ForConditionalGeneration tensors from project params."""
  t: dict[str, np.ndarray] = {"shared.weight": flat["embed/token/embedding"]}

  def linear(name: str, path: str) -> None:
    t[f"{name}.weight"] = flat[f"{path}/kernel"].T

  for stack, layers in (("encoder", cfg.num_layers),
                        ("decoder", cfg.num_decoder_layers or cfg.num_layers)):
    t[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        flat[f"{stack}/rel_bias/embedding"])
    linears, norms = layer_table(stack, cfg.mlp_gated)
    for i in range(layers):
      h, b = f"{stack}.block.{i}.layer.", f"{stack}/block_{i}/"
      for hf_name, ours in linears:
        linear(h + hf_name, b + ours)
      for hf_name, ours in norms:
        t[f"{h}{hf_name}.weight"] = flat[f"{b}{ours}/scale"]
    t[f"{stack}.final_layer_norm.weight"] = flat[f"{stack}/ln_final/scale"]
  if not cfg.tie_embeddings:
    t["lm_head.weight"] = flat["lm_head/kernel"].T
  elif not cfg.tied_logits_scale:
    # Tied but unscaled: transformers 4 has no such config (its tie_word_embeddings
    # means both), so the head is written out as an equal copy with tying off;
    # transformers 5 ties equal tensors back, and the import sees them tied.
    t["lm_head.weight"] = flat["embed/token/embedding"]
  return t


def _projection(cfg: Any) -> str:
  if cfg.activation == "relu":
    act = "relu"
  elif cfg.gelu_approximate:
    act = "gelu" if cfg.mlp_gated else "gelu_new"  # T5Config reads "gated-gelu" as gelu_new
  else:
    act = "gelu_python" if cfg.mlp_gated else "gelu"  # exact erf: "gated-gelu" is not
  return f"gated-{act}" if cfg.mlp_gated else act



BACKBONE_PREFIX = ""  # T5ForConditionalGeneration's stacks sit at its root


def peft_modules(paths: set[str]) -> tuple[dict[str, str], str] | None:
  """(project module path → HF module name, "") of an encoder–decoder parameter tree's
  `node_paths` (T5's layout), or None if it is not one."""
  if not ("encoder/block_0" in paths and "decoder/block_0" in paths):
    return None
  ours: dict[str, str] = {}
  for stack in ("encoder", "decoder"):
    linears, _ = layer_table(stack, f"{stack}/block_0/mlp/fc_gate" in paths)
    ours.update(stack_modules(paths, linears, stack + ".block.{i}.layer.", f"{stack}/"))
  return {k: v for k, v in ours.items() if f"{k}/kernel" in paths}, BACKBONE_PREFIX

# What a model must be to export as T5: field → required value (and relative buckets).
_REQUIRED = {"pre_norm": True, "norm": "rms", "use_bias": False, "attention_scale": False,
             "rope": False, "sinusoidal": False, "embed_scale": False, "embed_proj_dim": 0,
             "share_layers": False, "layer_dims": (), "type_vocab_size": 0, "embed_norm": False,
             "pooler": False, "num_kv_heads": 0, "qkv_bias": False, "sliding_window": 0}


def fits(cfg: Any, encoder_decoder: bool) -> str:
  """"" if `cfg` exports as T5, else the first field that does not fit."""
  if not encoder_decoder:
    return "not an encoder–decoder"
  misfit = first_misfit(cfg, _REQUIRED)
  if not misfit and not cfg.relative_buckets:
    misfit = "model.relative_buckets=0 (needs its relative position buckets, > 0)"
  return misfit


def hf_config(cfg: Any, heads: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
  """A T5 config.json for `cfg` (fields of `base`, the imported one, kept).

  `tie_word_embeddings` is true only for the tied, scaled head (v1.0), which
  is what it means to transformers 4; `scale_decoder_outputs` says the scale
  to transformers 5, which reads it first.
  """
  del heads
  if cfg.embed_dropout != cfg.residual_dropout or cfg.attention_dropout != cfg.residual_dropout:
    raise UserError(f"Hugging Face T5 has one dropout_rate; embed_dropout={cfg.embed_dropout}, "
                    f"attention_dropout={cfg.attention_dropout} and residual_dropout="
                    f"{cfg.residual_dropout} differ")
  scaled = cfg.tie_embeddings and cfg.tied_logits_scale
  proj = _projection(cfg)
  act = proj.split("-")[-1]
  out = dict(base or {})
  out.update(
      model_type=MODEL_TYPE, architectures=["T5ForConditionalGeneration"],
      vocab_size=cfg.vocab_size, d_model=cfg.embed_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers or cfg.num_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_buckets,
      relative_attention_max_distance=cfg.relative_max_distance,
      dropout_rate=cfg.residual_dropout, layer_norm_epsilon=cfg.layer_norm_eps,
      feed_forward_proj=proj, dense_act_fn="gelu_new" if proj == "gated-gelu" else act,
      is_gated_act=cfg.mlp_gated, tie_word_embeddings=scaled, scale_decoder_outputs=scaled,
      is_encoder_decoder=True, is_decoder=False)
  if cfg.max_len:  # informational for T5 (relative positions); a run may leave it unset
    out["n_positions"] = cfg.max_len
  out.setdefault("pad_token_id", 0)
  out.setdefault("eos_token_id", 1)
  out.setdefault("decoder_start_token_id", out["pad_token_id"])
  return out
