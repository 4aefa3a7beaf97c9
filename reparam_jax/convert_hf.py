r"""Imports a Hugging Face GPT-2 or BERT model folder as a project checkpoint.

  python -m reparam_jax.convert_hf --from=/models/gpt2 --to=/ckpt/gpt2

reads `config.json` and `model.safetensors` (or `pytorch_model.bin`, read
without PyTorch) and writes into the `--to` folder:

  params/          the params checkpoint; start training from it with
                   `--config.init_from=/ckpt/gpt2`
  hf_model.json    the model as a config `model` section (every
                   `TransformerConfig` field)
  hf_source.json   family, architecture, heads and the original config.json
                   (what `export_hf` needs to write the model back)
  tokenizer.json   the folder's tokenizer (GPT-2 BPE or BERT WordPiece), in
                   the form `load_tokenizer` reads, when the folder has one

and prints the `--config.model.*` overrides that rebuild the architecture.
Heads live next to the Transformer's own parameters under `mlm_head/`,
`nsp_head/` and `classifier/` (see reparam_jax/models/heads.py); GPT-2's
LM head is the tied output layer.  Mapping tables: reparam_jax/hf/gpt2.py,
reparam_jax/hf/bert.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.hf import family
from reparam_jax.hf.common import check_shapes, unflatten
from reparam_jax.hf.files import read_config, read_weights, weights_file
from reparam_jax.models import Transformer, TransformerConfig
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.rundir import checkpoint

MODEL_FILE = "hf_model.json"
SOURCE_FILE = "hf_source.json"


def build_model(cfg: TransformerConfig, heads: dict[str, Any]) -> nn.Module:
  """The Flax model whose parameter tree an imported checkpoint has."""
  if cfg.causal:
    return Transformer(cfg)
  names = tuple(h for h in ("mlm", "nsp", "classifier") if heads.get(h))
  classifier = heads.get("classifier") or {}
  return EncoderWithHeads(cfg, heads=names, num_classes=int(classifier.get("num_classes", 2)),
                          classifier_dropout=float(classifier.get("dropout", 0.0)),
                          pooling="cls", classifier_norm=False)


def init_inputs(model: nn.Module, length: int = 4) -> tuple[jax.Array, ...]:
  ids = jnp.zeros((1, length), jnp.int32)
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


def import_folder(folder: str) -> tuple[dict[str, Any], TransformerConfig, dict[str, Any],
                                        dict[str, Any]]:
  """(params, config, heads, source info) of a Hugging Face model folder."""
  hf = read_config(folder)
  where_cfg = os.path.join(folder, "config.json")
  fam = family(hf.get("model_type"), where_cfg)
  archs = hf.get("architectures") or []
  unknown = [a for a in archs if a not in fam.ARCHITECTURES]
  if unknown:
    raise UserError(f"{where_cfg}: architecture {unknown[0]} is not supported; supported: "
                    f"{', '.join(fam.ARCHITECTURES)}")
  path = weights_file(folder)
  params, cfg, heads = import_tensors(hf, read_weights(path), path)
  source = {"family": fam.MODEL_TYPE, "architecture": archs[0] if archs else None,
            "heads": heads, "hf_config": hf, "from": os.path.abspath(folder),
            "weights": os.path.basename(path)}
  return params, cfg, heads, source


def import_tensors(hf: dict[str, Any], tensors: dict[str, np.ndarray], where: str
                   ) -> tuple[dict[str, Any], TransformerConfig, dict[str, Any]]:
  """(params, config, heads) from a config.json dict and its state dict."""
  fam = family(hf.get("model_type"), where)
  fields = fam.model_fields(hf)
  heads = fam.heads_of(tensors, hf)
  if "pooler" in heads:
    fields["pooler"] = heads.pop("pooler")
  cfg = TransformerConfig(**fields)
  flat, src = fam.import_params(tensors, hf, cfg, heads, where)
  unused = src.unused()
  if unused:
    raise UserError(f"{where}: parameter {unused[0]} has no place in a {fam.MODEL_TYPE} model "
                    f"({len(unused)} such in all); is config.json the right one?")
  check_shapes(flat, expected_shapes(build_model(cfg, heads)), src.origin, where)
  params = unflatten({k: v if v.dtype == np.float32 else v.astype(np.float32)
                      for k, v in flat.items()})
  return params, cfg, heads


def model_section(cfg: TransformerConfig) -> dict[str, Any]:
  """`cfg` as a config `model` section (JSON-friendly)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def overrides(cfg: TransformerConfig) -> tuple[list[str], list[str]]:
  """`--config.model.*` flags for the sizes and every field off its default:
  (those `base_config()` has, those only some configs define)."""
  from reparam_jax.config.base import base_config  # noqa: PLC0415
  known = set(base_config().model.keys())
  sizes = ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len")
  flags: tuple[list[str], list[str]] = ([], [])
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if f.name != "causal" and (f.name in sizes or value != f.default):  # the task sets causal
      flags[f.name not in known].append(f"--config.model.{f.name}={value}")
  return flags


def convert(folder: str, workdir: str) -> dict[str, Any]:
  """Imports `folder` into `workdir`; returns what was written."""
  from reparam_jax.data import hf_tokenizers  # noqa: PLC0415

  params, cfg, heads, source = import_folder(folder)
  os.makedirs(workdir, exist_ok=True)
  checkpoint.save_params(os.path.join(workdir, "params"), params)
  with open(os.path.join(workdir, MODEL_FILE), "w", encoding="utf-8") as f:
    json.dump(model_section(cfg), f, indent=2)
  tokenizer = hf_tokenizers.load(folder)
  if tokenizer is not None:
    tokenizer.save(workdir)
    source["tokenizer"] = tokenizer.kind
  with open(os.path.join(workdir, SOURCE_FILE), "w", encoding="utf-8") as f:
    json.dump(source, f, indent=2)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return {"params": n, "config": cfg, "heads": heads, "tokenizer": tokenizer}


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.convert_hf", allow_abbrev=False,
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="src", required=True, help="Hugging Face model folder")
  parser.add_argument("--to", dest="dst", required=True, help="where to write the checkpoint")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  out = convert(args.src, args.dst)
  dst = os.path.abspath(args.dst)
  heads = ", ".join(h for h, v in out["heads"].items() if v) or "none"
  print(f"imported {args.src}: {out['params']:,} parameters (heads: {heads}) -> {dst}/params")
  if out["tokenizer"] is not None:
    tok = out["tokenizer"]
    print(f"tokenizer: {tok.kind}, {tok.vocab_size:,} tokens -> {dst}/tokenizer.json")
  common, special = overrides(out["config"])
  print(f"model section: {dst}/{MODEL_FILE}; start a run from this checkpoint with")
  print(f"  --config.init_from={dst} " + " ".join(common + special))
  if special:
    print("  (the model.* fields after the sizes and dropouts exist in encoder configs, "
          "reparam_jax.tasks.encoder.encoder_defaults; elsewhere set them in the config file, "
          f"e.g. c.model.update(json.load(open('{dst}/{MODEL_FILE}'))))")
  return out


if __name__ == "__main__":
  main()
