"""Starting a run from a pretrained model: its architecture, its weights, its tokenizer.

`config.init_from` may name a `convert_hf` output (it holds `hf_model.json`)
or a Hugging Face model folder directly (`config.json` + weights, as
`huggingface-cli download` leaves it).  Either way the run takes from it:

- the architecture: `resolve(config)` fills every `config.model` field that
  the config leaves unset (`None`; `vocab_size`/`max_len` also at 0) from
  the checkpoint.  A field the config sets to another value is a one-line
  error naming it: a pretrained model's weights fit only its own shape.
  Dropout rates, dtypes and remat are training choices, not architecture:
  the config's values win, the checkpoint's (the HF `*_dropout_prob`) fill
  them only where unset;
- the weights: `load_params(path)` reads either kind of folder;
- the tokenizer: tasks load the folder's (`data.tokenizers.load_tokenizer`
  reads a `tokenizer.json` or `vocab.txt`), so token ids mean what the
  embedding table learned.

Configs written for a pretrained model call `architecture_from_checkpoint(c)`,
which unsets the architecture fields (configs/sst2/minilm_*.py).  Such a
config may also start from a *training run* that began from a pretrained
model (compressing or distilling a fine-tuned model): the unset fields are
then filled from that run's `config.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import ml_collections

from reparam_jax import tasks
from reparam_jax.errors import UserError
from reparam_jax.hf import FAMILIES
from reparam_jax.hf.files import read_config, read_json, read_weights, weights_file
from reparam_jax.hf.importer import MODEL_FILE, architecture, import_folder, model_section
from reparam_jax.models import TransformerConfig
from reparam_jax.rundir import checkpoint

# Choices a run makes for itself; everything else in TransformerConfig is architecture.
TRAINING_FIELDS = ("embed_dropout", "attention_dropout", "residual_dropout", "dtype",
                   "param_dtype", "remat")
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig)
                            if f.name not in TRAINING_FIELDS)
# 0 means "derive it" (from the tokenizer / seq_len) in every config.
_ZERO_IS_UNSET = ("vocab_size", "max_len")


def kind(path: str) -> str | None:
  """'converted' (a convert_hf output), 'hf' (a Hugging Face folder), 'run' (a training
  workdir) or None (anything else, e.g. a bare params checkpoint)."""
  if not path or not os.path.isdir(path):
    return None
  if os.path.exists(os.path.join(path, MODEL_FILE)):
    return "converted"
  found = read_json(os.path.join(path, "config.json"))
  if found.get("model_type") in FAMILIES:
    return "hf"
  if isinstance(found.get("model"), dict) and "task" in found:
    return "run"
  return None


def checkpoint_model(path: str) -> dict[str, Any]:
  """The `model` section of the pretrained model at `path` (starts no JAX backend)."""
  if kind(path) == "converted":
    return read_json(os.path.join(path, MODEL_FILE))
  if kind(path) == "run":
    run = read_json(os.path.join(path, "config.json"))
    return dict(run["model"], causal=tasks.task_class(run).CAUSAL_LM)
  weights = weights_file(path)
  return dict(_hf_model_section(weights, os.path.getmtime(weights)))


@functools.lru_cache(maxsize=4)
def _hf_model_section(weights: str, mtime: float) -> tuple[tuple[str, Any], ...]:
  """An HF folder's section, read once per process: `train` resolves the config before
  the devices start and the loop resolves it again, and the heads are only visible in
  the weights file (which may be gigabytes)."""
  del mtime  # part of the cache key: a rewritten file is read again
  folder = os.path.dirname(weights)
  cfg, _ = architecture(read_config(folder), read_weights(weights), weights)
  return tuple(model_section(cfg).items())


def load_params(path: str, keep_packed: bool = False) -> Any:
  """The parameters of a pretrained model folder, a params checkpoint or a workdir
  (`keep_packed`: a compressed-tensors folder's quantized kernels as it stores them,
  `importer.import_tensors`)."""
  if kind(path) == "hf":
    params, _, _, _ = import_folder(path, keep_packed)
    return params
  return checkpoint.load_params(path)


def select_layers(params: Any, layers: Sequence[int], where: str) -> Any:
  """`params` whose block i is the checkpoint's block `layers[i]` (the rest dropped)."""
  found = {k for k in params if k.startswith("block_")}
  missing = [i for i in layers if f"block_{i}" not in found]
  if missing:
    raise UserError(f"init_layers={tuple(layers)}: {where} has no block_{missing[0]} "
                    f"(it has {len(found)} blocks)")
  out = {k: v for k, v in params.items() if k not in found}
  out.update({f"block_{i}": params[f"block_{j}"] for i, j in enumerate(layers)})
  return out


def architecture_from_checkpoint(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Unsets `c.model`'s architecture fields (and dropouts) so `resolve` fills them from
  `init_from`.  A `--config.model.X=...` override still sets (and is checked against) X."""
  c.model.preset = ""
  for name in ARCHITECTURE_FIELDS + ("embed_dropout", "attention_dropout", "residual_dropout"):
    with c.model.ignore_type():
      c.model[name] = None
  return c


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with its model section completed from a pretrained `init_from` (else unchanged)."""
  path = os.path.expandvars(config.get("init_from", ""))  # "$REPARAM_DATA_DIR/models/..."
  if "$" in path:
    raise UserError(f"init_from={path!r}: an environment variable in it is not set "
                    "(e.g. export REPARAM_DATA_DIR=/path/to/raw_data)")
  if path != config.get("init_from", ""):
    config = ml_collections.ConfigDict(config.to_dict())
    config.init_from = path
    config.lock()
  unset = [k for k in ARCHITECTURE_FIELDS if k in config.model and config.model[k] is None]
  if kind(path) == "run":
    missing = [k for k in ARCHITECTURE_FIELDS + TRAINING_FIELDS
               if k in config.model and config.model[k] is None]
    return _fill_from_run(config, path, missing) if missing else config
  if not kind(path):
    if unset and path and not os.path.exists(path):
      raise UserError(f"init_from={path} does not exist; run the experiment that writes it "
                      "first (see the config's docstring) or pass --config.init_from=...")
    if unset:
      raise UserError(f"config.model.{unset[0]} is unset, to come from a pretrained model, but "
                      f"init_from={path!r} is not one; pass --config.init_from=<a convert_hf "
                      "output or a Hugging Face model folder>")
    return config
  ckpt = _with_layers(checkpoint_model(path), config, path)
  where = f"init_from={path}"
  if config.model.get("preset"):
    raise UserError(f"config.model.preset={config.model.preset!r} conflicts with {where}: "
                    "the architecture comes from the checkpoint; set the preset to ''")
  resolved = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
  for name in ARCHITECTURE_FIELDS + TRAINING_FIELDS:
    if name == "causal" or name not in ckpt:  # the task decides causal (checked below)
      continue
    theirs = ckpt[name]
    mine = config.model.get(name)
    unset = mine is None or (name in _ZERO_IS_UNSET and mine == 0)
    if unset:
      with resolved.model.ignore_type():
        resolved.model[name] = tuple(theirs) if isinstance(theirs, list) else theirs
    elif name in ARCHITECTURE_FIELDS and _normal(mine) != _normal(theirs):
      raise UserError(f"config.model.{name}={mine!r} conflicts with the checkpoint's "
                      f"{theirs!r} ({where}); leave it unset: a pretrained model's "
                      "architecture comes from its checkpoint")
  wants_decoder = tasks.task_class(config).CAUSAL_LM
  if bool(ckpt.get("causal")) != wants_decoder:
    raise UserError(f"{where} is {'a decoder' if ckpt.get('causal') else 'an encoder'} but "
                    f"task={config.get('task')!r} trains "
                    f"{'a decoder' if wants_decoder else 'an encoder'}")
  if resolved.model.get("causal") is None:  # concrete, so config.json is a complete architecture
    resolved.model.causal = wants_decoder
  if resolved.model.max_len and config.get("seq_len", 0) > resolved.model.max_len:
    raise UserError(f"config.seq_len={config.seq_len} is longer than the checkpoint's "
                    f"max_len={resolved.model.max_len} ({where})")
  resolved.lock()
  return resolved


def _with_layers(model: dict[str, Any], config: ml_collections.ConfigDict, path: str
                 ) -> dict[str, Any]:
  """The checkpoint's model section as `init_layers` cuts it (fewer blocks)."""
  layers = tuple(config.get("init_layers", ()))
  if not layers:
    return model
  bad = [i for i in layers if not 0 <= i < model["num_layers"]]
  if bad:
    raise UserError(f"init_layers={layers}: init_from={path} has {model['num_layers']} "
                    f"blocks (0..{model['num_layers'] - 1}), not block {bad[0]}")
  return dict(model, num_layers=len(layers))


def _fill_from_run(config: ml_collections.ConfigDict, path: str, unset: list[str]
                   ) -> ml_collections.ConfigDict:
  """The unset model fields from a training run's config.json (its shapes are then checked
  parameter by parameter when its checkpoint loads)."""
  theirs = _with_layers(checkpoint_model(path), config, path)
  resolved = ml_collections.ConfigDict(config.to_dict())
  for name in unset:
    value = theirs.get(name)
    with resolved.model.ignore_type():
      resolved.model[name] = tuple(value) if isinstance(value, list) else value
  if theirs.get("preset") and not config.model.get("preset"):
    resolved.model.preset = theirs["preset"]
  resolved.lock()
  return resolved


def _normal(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_normal(v) for v in value)
  if isinstance(value, bool):
    return value
  if isinstance(value, (int, float)):
    return float(value)
  return value
