"""Exporting a project checkpoint as a Hugging Face model folder.

The library half of `python -m reparam_jax.export_hf`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from jax.experimental import multihost_utils

from reparam_jax import tasks
from reparam_jax.data import hf_tokenizers
from reparam_jax.errors import UserError
from reparam_jax.hf import exporting_family
from reparam_jax.hf.common import check_shapes
from reparam_jax.hf.files import GENERATION_CONFIG
from reparam_jax.hf.importer import MODEL_FILE, SOURCE_FILE, build_model, expected_shapes
from reparam_jax.models import TransformerConfig, transformer_config
from reparam_jax.pytree import layers
from reparam_jax.pytree.paths import dict_leaves
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.rundir import workdir as rundir

_HEAD_KEYS = ("mlm_head", "nsp_head", "classifier")


def _read_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _source_of(folder: str) -> dict[str, Any]:
  path = os.path.join(folder, SOURCE_FILE) if folder else ""
  return _read_json(path) if path and os.path.exists(path) else {}


def _run_model(run_config: dict[str, Any], flat: dict[str, Any]) -> TransformerConfig:
  """The model a training run built: its `model` section, sizes the trainer
  fills in at run time (vocabulary, length) read off the parameters."""
  section = dict(run_config.get("model") or {})
  section["vocab_size"] = section.get("vocab_size") or flat["embed/token/embedding"].shape[0]
  if "embed/position/embedding" in flat:
    section["max_len"] = section.get("max_len") or flat["embed/position/embedding"].shape[0]
  else:
    section["max_len"] = section.get("max_len") or run_config.get("seq_len")
  if run_config.get("task") and tasks.task_class(run_config).CAUSAL_LM:
    section["causal"] = True
  else:
    section.setdefault("causal", False)
  section["layer_dims"] = tuple(section.get("layer_dims") or ())
  section["scan_layers"] = False  # the params are unrolled (load_for_export)
  return transformer_config(section)


def _is_encoder_decoder(flat: dict[str, Any]) -> bool:
  # models/seq2seq.py's tree: two stacks under encoder/ and decoder/ (Transformer has neither).
  return any(k.startswith("decoder/") for k in flat)


def _heads(flat: dict[str, Any], source_heads: dict[str, Any]) -> dict[str, Any]:
  heads: dict[str, Any] = {}
  if "mlm_head/bias" in flat:
    heads["mlm"] = True
  if "nsp_head/out/kernel" in flat:
    heads["nsp"] = True
  if "classifier/out/kernel" in flat:
    dropout = (source_heads.get("classifier") or {}).get("dropout", 0.1)
    heads["classifier"] = {"num_classes": int(flat["classifier/out/kernel"].shape[1]),
                           "dropout": dropout}
  return heads


def load_for_export(workdir: str) -> tuple[dict[str, Any], TransformerConfig,
                                           dict[str, Any], dict[str, Any]]:
  """(flat dense params, model config, heads, convert_hf source info) of a run or import."""

  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is not a directory")
  model_json = os.path.join(workdir, MODEL_FILE)
  run_json = rundir.path(workdir, rundir.CONFIG)
  if os.path.exists(model_json):
    flat = _flat_arrays(checkpoint.load_params(workdir))
    section = _read_json(model_json)
    section["layer_dims"] = tuple(section.get("layer_dims") or ())
    cfg, source = TransformerConfig(**section), _source_of(workdir)
  elif os.path.exists(run_json) and (os.path.isdir(rundir.path(workdir, rundir.CHECKPOINTS))
                                     or os.path.isdir(rundir.path(workdir, rundir.PARAMS))):
    # a training workdir, or a `compress` output (its params/ and the run's config.json)
    run_config = _read_json(run_json)
    params = checkpoint.load_params(workdir)
    rules = (run_config.get("reparam") or {}).get("rules")
    if rules:  # the weights the run computes with: adapters merged, its masks applied
      params = sharded.apply_spread(Reparam.from_config(run_config["reparam"]).to_dense,
                                    params, rundir.load_masks(workdir))
    flat = _flat_arrays(layers.unstack_layers(params))  # Hugging Face numbers its layers
    cfg, source = _run_model(run_config, flat), _source_of(run_config.get("init_from") or "")
  else:
    raise UserError(f"{workdir} is neither a training workdir (config.json + checkpoints/), "
                    "a compress output (config.json + params/) nor a convert_hf output "
                    "(hf_model.json + params/)")
  return flat, cfg, _heads(flat, source.get("heads") or {}), source


# transformers 4's `save_pretrained` default: "5GB" per file.
MAX_SHARD_BYTES = 5 * 10**9
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def export(workdir: str, out_dir: str, max_shard_bytes: int = MAX_SHARD_BYTES
           ) -> dict[str, Any]:
  """Writes `out_dir`/{config.json, model.safetensors, tokenizer files}.

  Over `max_shard_bytes` of fp32 tensors the weights go to several files,
  `model-00001-of-0000N.safetensors` and `model.safetensors.index.json` (the
  layout `save_pretrained` writes and `from_pretrained` reads).  In a
  multi-process run every process takes part: each tensor is gathered by
  itself, and process 0 holds at most one file's tensors at a time.
  """
  flat, cfg, heads, source = load_for_export(workdir)
  encoder_decoder = _is_encoder_decoder(flat)
  fam = exporting_family(cfg, encoder_decoder)
  check_shapes(flat, expected_shapes(build_model(cfg, heads, encoder_decoder)), {}, workdir,
               "the model config")
  tensors = fam.export_params(flat, cfg)  # arrays still split over the processes
  hf_config = fam.hf_config(cfg, heads, source.get("hf_config"))
  hf_config["torch_dtype"] = "float32"
  hf_config.pop("quantization_config", None)  # an imported compressed model's: written dense
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  _write_safetensors(tensors, out_dir, max_shard_bytes, writer)
  tokenizer = hf_tokenizers.load(workdir)
  if writer:
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_config, f, indent=2)
    if tokenizer is not None:
      tokenizer.save(out_dir)
    if os.path.exists(os.path.join(workdir, GENERATION_CONFIG)):  # a convert_hf output's
      shutil.copyfile(os.path.join(workdir, GENERATION_CONFIG),
                      os.path.join(out_dir, GENERATION_CONFIG))
  if jax.process_count() > 1:  # every process returns once the folder is complete
    multihost_utils.sync_global_devices("reparam_jax:export_hf")
  return {"tensors": len(tensors), "values": sum(_size(v) for v in tensors.values()),
          "files": len(_shard_plan(tensors, max_shard_bytes)),
          "architecture": hf_config["architectures"][0], "tokenizer": tokenizer,
          "config": dataclasses.asdict(cfg)}


def _size(x: Any) -> int:
  return int(np.prod(np.shape(x), dtype=np.int64))


def _shard_plan(tensors: dict[str, Any], max_shard_bytes: int) -> list[list[str]]:
  """Tensor names per file, in order; a file is closed before it would pass the limit."""
  files: list[list[str]] = [[]]
  used = 0
  for name, x in tensors.items():
    nbytes = 4 * _size(x)  # written as float32
    if files[-1] and used + nbytes > max_shard_bytes:
      files.append([])
      used = 0
    files[-1].append(name)
    used += nbytes
  return files


def _write_safetensors(tensors: dict[str, Any], out_dir: str, max_shard_bytes: int,
                       writer: bool) -> None:
  plan = _shard_plan(tensors, max_shard_bytes)
  names = ([WEIGHTS_FILE] if len(plan) == 1 else
           [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
  for file_name, members in zip(names, plan):
    # Every process gathers each tensor (a collective); only the writer keeps it.
    host = {}
    for name in members:
      value = np.ascontiguousarray(sharded.host_copy(tensors[name]), np.float32)
      if writer:
        host[name] = value
    if writer:
      safetensors.numpy.save_file(host, os.path.join(out_dir, file_name),
                                  metadata={"format": "pt"})
    del host
  if writer and len(plan) > 1:
    index = {"metadata": {"total_size": sum(4 * _size(v) for v in tensors.values())},
             "weight_map": {n: f for f, members in zip(names, plan) for n in members}}
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
      json.dump(index, f, indent=2)


def _flat_arrays(tree: Any) -> dict[str, Any]:
  """`{path: array}` of a params tree, the arrays left where they are (not gathered)."""
  return dict(dict_leaves(tree))
