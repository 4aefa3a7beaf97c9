"""Importing a Hugging Face model folder (hf/__init__.py lists the families) as a project
checkpoint.

The library half of `python -m reparam_jax.convert_hf` (see that command for
the folder it writes).  Mapping tables: hf/gpt2.py, bert.py, llama.py, t5.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.data import hf_tokenizers
from reparam_jax.errors import UserError
from reparam_jax.hf import family, is_encoder_decoder
from reparam_jax.hf.common import check_shapes, unflatten
from reparam_jax.hf.files import GENERATION_CONFIG, read_config, read_weights, weights_file
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.models.seq2seq import EncoderDecoder
from reparam_jax.rundir import checkpoint

MODEL_FILE = "hf_model.json"
SOURCE_FILE = "hf_source.json"


def build_model(cfg: TransformerConfig, heads: dict[str, Any], encoder_decoder: bool = False
                ) -> nn.Module:
  """The Flax model whose parameter tree an imported checkpoint has.

  `encoder_decoder`: a family whose `ENCODER_DECODER` is set (T5), the seq2seq task's model.
  """
  if encoder_decoder:
    return EncoderDecoder(cfg)
  if cfg.causal:
    return Transformer(cfg)
  names = tuple(h for h in ("mlm", "nsp", "classifier") if heads.get(h))
  classifier = heads.get("classifier") or {}
  return EncoderWithHeads(cfg, heads=names, num_classes=int(classifier.get("num_classes", 2)),
                          classifier_dropout=float(classifier.get("dropout", 0.0)),
                          pooling="cls", classifier_norm=False)


def init_inputs(model: nn.Module, length: int = 4) -> tuple[jax.Array, ...]:
  ids = jnp.zeros((1, length), jnp.int32)
  if isinstance(model, EncoderDecoder):
    return ids, ids
  if isinstance(model, EncoderWithHeads):
    ones = jnp.ones((1, length), bool)
    return ids, ones, jnp.zeros_like(ids), jnp.zeros((1, 1), jnp.int32)
  return (ids,)


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
  """Flat `path -> shape` of the model's parameters, without allocating them."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model)))
  tree = nn.meta.unbox(shapes["params"])
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def import_folder(folder: str, keep_packed: bool = False
                  ) -> tuple[dict[str, Any], TransformerConfig, dict[str, Any], dict[str, Any]]:
  """(params, config, heads, source info) of a Hugging Face model folder (`keep_packed`:
  see `import_tensors`)."""
  hf = read_config(folder)
  where_cfg = os.path.join(folder, "config.json")
  fam = family(hf.get("model_type"), where_cfg)
  archs = hf.get("architectures") or []
  unknown = [a for a in archs if a not in fam.ARCHITECTURES]
  if unknown:
    raise UserError(f"{where_cfg}: architecture {unknown[0]} is not supported; supported: "
                    f"{', '.join(fam.ARCHITECTURES)}")
  path = weights_file(folder)
  params, cfg, heads = import_tensors(hf, read_weights(path), path, keep_packed)
  source = {"family": hf.get("model_type"), "architecture": archs[0] if archs else None,
            "encoder_decoder": is_encoder_decoder(fam),
            "heads": heads, "hf_config": hf, "from": os.path.abspath(folder),
            "weights": os.path.basename(path)}
  return params, cfg, heads, source


def architecture(hf: dict[str, Any], tensors: dict[str, np.ndarray], where: str
                 ) -> tuple[TransformerConfig, dict[str, Any]]:
  """(config, heads) of a config.json dict and its state dict; touches no device."""
  fam = family(hf.get("model_type"), where)
  fields = fam.model_fields(hf)
  if hasattr(fam, "fields_with_tensors"):  # T5: whether the LM head is tied shows in the weights
    fields = fam.fields_with_tensors(fields, tensors)
  heads = fam.heads_of(tensors, hf)
  if "pooler" in heads:
    fields["pooler"] = heads.pop("pooler")
  return TransformerConfig(**fields), heads


def import_tensors(hf: dict[str, Any], tensors: dict[str, np.ndarray], where: str,
                   keep_packed: bool = False
                   ) -> tuple[dict[str, Any], TransformerConfig, dict[str, Any]]:
  """(params, config, heads) from a config.json dict and its state dict.

  `keep_packed`: a compressed-tensors folder's quantized Llama projections stay as the
  folder stores them (`compressed_tensors.PackedWeight` leaves, for `adopt_packed`), not
  dequantized; everything else is imported as without it.
  """
  fam = family(hf.get("model_type"), where)
  kept: dict[str, Any] = {}
  if (hf.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
    from reparam_jax.hf import compressed_tensors  # here: it imports the exporter, which imports us
    if keep_packed:
      tensors, kept = compressed_tensors.split_packed(tensors, hf, where)
    tensors = compressed_tensors.decompress(tensors, hf, where)  # dequantized, dense
  cfg, heads = architecture(hf, tensors, where)
  flat, src = fam.import_params(tensors, hf, cfg, heads, where)
  unused = src.unused()
  if unused:
    kind = hf.get("model_type")
    raise UserError(f"{where}: parameter {unused[0]} has no place in a {kind} model "
                    f"({len(unused)} such in all); is config.json the right one?")
  model = build_model(cfg, heads, encoder_decoder=is_encoder_decoder(fam))
  check_shapes(flat, expected_shapes(model), src.origin, where)
  flat = {k: v if v.dtype == np.float32 else v.astype(np.float32) for k, v in flat.items()}
  flat.update(kept)  # in place of their placeholders, checked above like any weight
  return unflatten(flat), cfg, heads


def model_section(cfg: TransformerConfig) -> dict[str, Any]:
  """`cfg` as a config `model` section (JSON-friendly)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def convert(folder: str, workdir: str) -> dict[str, Any]:
  """Imports `folder` into `workdir`; returns what was written."""

  params, cfg, heads, source = import_folder(folder)
  os.makedirs(workdir, exist_ok=True)
  checkpoint.save_params(os.path.join(workdir, "params"), params)
  with open(os.path.join(workdir, MODEL_FILE), "w", encoding="utf-8") as f:
    json.dump(model_section(cfg), f, indent=2)
  tokenizer = hf_tokenizers.load(folder)
  if tokenizer is not None:
    tokenizer.save(workdir)
    source["tokenizer"] = tokenizer.kind
  if os.path.exists(os.path.join(folder, GENERATION_CONFIG)):  # stop tokens, for sample
    shutil.copyfile(os.path.join(folder, GENERATION_CONFIG), os.path.join(workdir,
                                                                          GENERATION_CONFIG))
  with open(os.path.join(workdir, SOURCE_FILE), "w", encoding="utf-8") as f:
    json.dump(source, f, indent=2)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return {"params": n, "config": cfg, "heads": heads, "tokenizer": tokenizer}
