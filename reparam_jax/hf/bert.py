"""BERT (`model_type: bert`) ↔ the project's encoder with heads (`models/heads.py`).

  HF name (prefix `bert.` dropped)                 project path
  embeddings.word_embeddings                       embed/token/embedding
  embeddings.position_embeddings                   embed/position/embedding
  embeddings.token_type_embeddings                 embed/token_type/embedding
  embeddings.LayerNorm                             embed/ln/{scale,bias}
  encoder.layer.{i}.attention.self.{query,key,value} block_{i}/attn/{query,key,value}
  encoder.layer.{i}.attention.output.dense         block_{i}/attn/out
  encoder.layer.{i}.attention.output.LayerNorm     block_{i}/ln_attn
  encoder.layer.{i}.intermediate.dense             block_{i}/mlp/fc_in
  encoder.layer.{i}.output.dense                   block_{i}/mlp/fc_out
  encoder.layer.{i}.output.LayerNorm               block_{i}/ln_mlp
  pooler.dense                                     pooler
  cls.predictions.transform.dense                  mlm_head/transform     (BertForMaskedLM,
  cls.predictions.transform.LayerNorm              mlm_head/ln             BertForPreTraining)
  cls.predictions.bias                             mlm_head/bias          decoder tied to the
                                                                          word embeddings
  cls.seq_relationship                             nsp_head/out           (BertForPreTraining)
  classifier                                       classifier/out         (SequenceClassif.)

`nn.Linear` stores weights `[out, in]`; project kernels are `[in, out]`, so
every weight is transposed.  LayerNorm `weight`/`bias` map to
`scale`/`bias`; the TensorFlow-era `gamma`/`beta` names are accepted too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf.common import (
  Flat,
  Tensors,
  check_tied,
  get,
  plain_misfit,
  rename_keys,
  stack_modules,
)

MODEL_TYPE = "bert"
BACKBONE_PREFIX = "bert."  # BertFor*'s backbone module; BertModel has none
# The module tables import, export and PEFT's module names (hf/peft_names.py) all read:
# (HF module under encoder.layer.{i}., project path under block_{i}/).
LAYER_LINEARS = (("attention.self.query", "attn/query"), ("attention.self.key", "attn/key"),
                 ("attention.self.value", "attn/value"), ("attention.output.dense", "attn/out"),
                 ("intermediate.dense", "mlp/fc_in"), ("output.dense", "mlp/fc_out"))
LAYER_NORMS = (("attention.output.LayerNorm", "ln_attn"), ("output.LayerNorm", "ln_mlp"))
# Linear layers outside the stack: project path → HF module (the pooler is the backbone's).
HEAD_LINEARS = {"pooler": "pooler.dense", "mlm_head/transform": "cls.predictions.transform.dense",
                "nsp_head/out": "cls.seq_relationship", "classifier/out": "classifier"}
ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining",
                 "BertForSequenceClassification")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_PREFIXES = ("bert.",)


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """`TransformerConfig` keyword arguments from a BERT config.json."""
  act = get(hf, "hidden_act", "gelu")
  if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
    raise UserError(f"config.json: hidden_act={act!r} is not supported (the Transformer has "
                    "GELU only: gelu, gelu_new or gelu_pytorch_tanh)")
  pos = get(hf, "position_embedding_type", "absolute")
  if pos != "absolute":
    raise UserError(f"config.json: position_embedding_type={pos!r} is not supported (only "
                    "'absolute')")
  if get(hf, "is_decoder", False) or get(hf, "add_cross_attention", False):
    raise UserError("config.json: a BERT decoder (is_decoder/add_cross_attention) is not "
                    "supported; only the bidirectional encoder")
  hidden_drop = float(get(hf, "hidden_dropout_prob", 0.1))
  return dict(
      vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
      num_heads=int(hf["num_attention_heads"]), embed_dim=int(hf["hidden_size"]),
      mlp_dim=int(hf["intermediate_size"]), max_len=int(hf["max_position_embeddings"]),
      causal=False, pre_norm=False, type_vocab_size=int(get(hf, "type_vocab_size", 2)),
      embed_norm=True, pooler=True, tie_embeddings=True, gelu_approximate=act != "gelu",
      layer_norm_eps=float(get(hf, "layer_norm_eps", 1e-12)), embed_dropout=hidden_drop,
      attention_dropout=float(get(hf, "attention_probs_dropout_prob", 0.1)),
      residual_dropout=hidden_drop, layer_heads=_layer_heads(hf))


def _layer_heads(hf: dict[str, Any]) -> tuple[int, ...]:
  """Heads per layer of a config.json with `pruned_heads` (transformers 4's record of removed
  heads, {layer: [head, ...]}), or () when no layer lost any."""
  pruned = get(hf, "pruned_heads", {})
  if not pruned:
    return ()
  heads, layers = int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
  return tuple(heads - len(set(pruned.get(str(i), pruned.get(i, ())))) for i in range(layers))


def heads_of(tensors: dict[str, np.ndarray], hf: dict[str, Any]) -> dict[str, Any]:
  """Which heads the checkpoint holds, and whether it has the pooler.

  Read from the tensors rather than `architectures`: a pre-training
  checkpoint may list BertForMaskedLM yet ship the pooler and NSP head too.
  """
  tensors = rename_keys(tensors, _PREFIXES)
  names = set(tensors)
  heads: dict[str, Any] = {"pooler": "pooler.dense.weight" in names}
  if "cls.predictions.bias" in names:
    heads["mlm"] = True
  if "cls.seq_relationship.weight" in names:
    heads["nsp"] = True
  if "classifier.weight" in names:
    drop = get(hf, "classifier_dropout", get(hf, "hidden_dropout_prob", 0.1))
    heads["classifier"] = {"num_classes": int(tensors["classifier.weight"].shape[0]),
                           "dropout": float(drop)}
  return heads


def import_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], cfg: Any,
                  heads: dict[str, Any], where: str) -> tuple[Flat, Tensors]:
  src = Tensors(rename_keys(tensors, _PREFIXES), where)
  out: Flat = {}

  def put(path: str, name: str, value: np.ndarray | None = None) -> None:
    out[path] = src.take(name) if value is None else value
    src.origin[path] = name

  def linear(path: str, name: str) -> None:
    put(f"{path}/kernel", f"{name}.weight", src.take(f"{name}.weight").T)
    put(f"{path}/bias", f"{name}.bias")

  def norm(path: str, name: str) -> None:
    put(f"{path}/scale", f"{name}.weight")
    put(f"{path}/bias", f"{name}.bias")

  e = "embeddings."
  put("embed/token/embedding", e + "word_embeddings.weight")
  put("embed/position/embedding", e + "position_embeddings.weight")
  if cfg.type_vocab_size:
    put("embed/token_type/embedding", e + "token_type_embeddings.weight")
  norm("embed/ln", e + "LayerNorm")
  for i in range(cfg.num_layers):
    h, b = f"encoder.layer.{i}.", f"block_{i}/"
    for hf_name, ours in LAYER_LINEARS:
      linear(b + ours, h + hf_name)
    for hf_name, ours in LAYER_NORMS:
      norm(b + ours, h + hf_name)
  if cfg.pooler:
    linear("pooler", HEAD_LINEARS["pooler"])
  if heads.get("mlm"):
    p = "cls.predictions."
    linear("mlm_head/transform", HEAD_LINEARS["mlm_head/transform"])
    norm("mlm_head/ln", p + "transform.LayerNorm")
    put("mlm_head/bias", p + "bias")
    untied = ("is not tied to the word embeddings / prediction bias; untied MLM decoders are "
              "not supported")
    check_tied(src, p + "decoder.weight", out["embed/token/embedding"], f"{where}: {{}} {untied}")
    check_tied(src, p + "decoder.bias", out["mlm_head/bias"], f"{where}: {{}} {untied}")
  for path, head in (("nsp_head/out", "nsp"), ("classifier/out", "classifier")):
    if heads.get(head):
      linear(path, HEAD_LINEARS[path])
  for name in _BUFFERS:
    if src.has(name):
      src.take(name)
  return out, src


def export_params(flat: Flat, cfg: Any) -> dict[str, np.ndarray]:
  """Hugging Face BERT tensors (names of the architecture `hf_config` picks)."""
  if "classifier/ln/scale" in flat:
    raise UserError("parameter classifier/ln has no counterpart in Hugging Face's "
                    "BertForSequenceClassification (dropout → linear on the pooled output); "
                    "this classifier cannot be exported")
  heads = any(k.split("/")[0] in ("mlm_head", "nsp_head", "classifier") for k in flat)
  pre = BACKBONE_PREFIX if heads else ""
  t: dict[str, np.ndarray] = {}

  def linear(name: str, path: str) -> None:
    t[f"{name}.weight"] = flat[f"{path}/kernel"].T
    t[f"{name}.bias"] = flat[f"{path}/bias"]

  def norm(name: str, path: str) -> None:
    t[f"{name}.weight"] = flat[f"{path}/scale"]
    t[f"{name}.bias"] = flat[f"{path}/bias"]

  e = pre + "embeddings."
  t[e + "word_embeddings.weight"] = flat["embed/token/embedding"]
  t[e + "position_embeddings.weight"] = flat["embed/position/embedding"]
  if cfg.type_vocab_size:
    t[e + "token_type_embeddings.weight"] = flat["embed/token_type/embedding"]
  norm(e + "LayerNorm", "embed/ln")
  for i in range(cfg.num_layers):
    h, b = f"{pre}encoder.layer.{i}.", f"block_{i}/"
    for hf_name, ours in LAYER_LINEARS:
      linear(h + hf_name, b + ours)
    for hf_name, ours in LAYER_NORMS:
      norm(h + hf_name, b + ours)
  if cfg.pooler:
    linear(pre + HEAD_LINEARS["pooler"], "pooler")
  if "mlm_head/bias" in flat:
    linear(HEAD_LINEARS["mlm_head/transform"], "mlm_head/transform")
    norm("cls.predictions.transform.LayerNorm", "mlm_head/ln")
    t["cls.predictions.bias"] = flat["mlm_head/bias"]
  for path in ("nsp_head/out", "classifier/out"):
    if f"{path}/kernel" in flat:
      linear(HEAD_LINEARS[path], path)
  return t


def peft_modules(paths: set[str]) -> tuple[dict[str, str], str] | None:
  """(project module path → HF module name, the backbone prefix those names carry) of a
  BERT parameter tree's `node_paths`, or None if it is not a BERT's.  Names are as the
  model class the tree corresponds to writes them: `bert.` before the backbone's where
  the tree has heads (BertFor*), none for BertModel."""
  if not ("block_0/attn/query/kernel" in paths and "embed/ln" in paths):
    return None
  pre = BACKBONE_PREFIX if any(p in paths for p in ("mlm_head", "nsp_head", "classifier")) else ""
  ours = stack_modules(paths, LAYER_LINEARS, pre + "encoder.layer.{i}.")
  for path, hf_name in HEAD_LINEARS.items():
    ours[path] = (pre if path == "pooler" else "") + hf_name
  return {k: v for k, v in ours.items() if f"{k}/kernel" in paths}, pre


def architecture(heads: dict[str, Any]) -> str:
  if heads.get("classifier"):
    return "BertForSequenceClassification"
  if heads.get("mlm") and heads.get("nsp"):
    return "BertForPreTraining"
  if heads.get("mlm"):
    return "BertForMaskedLM"
  if heads.get("nsp"):
    raise UserError("a BERT with an NSP head but no MLM head has no Hugging Face architecture")
  return "BertModel"


def fits(cfg: Any, encoder_decoder: bool) -> str:
  """"" if `cfg` exports as this family, else the first field that does not fit."""
  if encoder_decoder:
    return "an encoder–decoder"
  # Per-layer head counts export as `pruned_heads`; `layer_heads` is then cfg's own.
  return plain_misfit(cfg, causal=False, pre_norm=False, embed_norm=True,
                      layer_heads=cfg.layer_heads)


def hf_config(cfg: Any, heads: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
  """A BERT config.json for `cfg` and `heads` (fields of `base`, the imported one, kept)."""
  if cfg.residual_dropout != cfg.embed_dropout:
    raise UserError(f"Hugging Face BERT has one hidden dropout; embed_dropout="
                    f"{cfg.embed_dropout} and residual_dropout={cfg.residual_dropout} differ")
  out = dict(base or {})
  out.update(
      model_type=MODEL_TYPE, architectures=[architecture(heads)], vocab_size=cfg.vocab_size,
      hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
      max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
      hidden_act="gelu_new" if cfg.gelu_approximate else "gelu",
      layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=cfg.residual_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout, position_embedding_type="absolute")
  out.setdefault("pad_token_id", 0)
  out.pop("pruned_heads", None)
  if cfg.layer_heads:
    # transformers 4 builds each layer with num_attention_heads, then removes these heads
    # (BertModel.prune_heads) before loading the weights; which numbers are listed does not
    # change the model, so the last ones stand for the removed.
    out["pruned_heads"] = {str(i): list(range(h, cfg.num_heads))
                           for i, h in enumerate(cfg.layer_heads) if h < cfg.num_heads}
  classifier = heads.get("classifier")
  if classifier:
    n = int(classifier["num_classes"])
    id2label = {str(k): v for k, v in (out.get("id2label") or {}).items()}
    if len(id2label) != n:
      id2label = {str(i): f"LABEL_{i}" for i in range(n)}
    out["id2label"] = id2label
    out["label2id"] = {v: int(k) for k, v in id2label.items()}
    out["classifier_dropout"] = classifier.get("dropout")
  return out
