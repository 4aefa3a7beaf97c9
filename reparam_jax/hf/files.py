"""Reads a local Hugging Face model folder: config.json and the weights.

Weights come from `model.safetensors` (mapped into memory, read when used),
or `pytorch_model.bin` (read by `torch_pickle`, no PyTorch needed), either
possibly sharded (`*.index.json` naming the shard of each tensor).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax.numpy as jnp
import numpy as np

from reparam_jax.errors import UserError
from reparam_jax.hf.torch_pickle import load_torch_state_dict

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
GENERATION_CONFIG = "generation_config.json"


def read_config(folder: str) -> dict[str, Any]:
  path = os.path.join(folder, "config.json")
  if not os.path.isdir(folder):
    raise UserError(f"--from={folder} is not a directory (expected a Hugging Face model folder)")
  if not os.path.exists(path):
    raise UserError(f"{folder} has no config.json; is it a Hugging Face model folder?")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None


def weights_file(folder: str) -> str:
  """The weights file (or shard index) to read, safetensors preferred."""
  for name in _WEIGHTS:
    for candidate in (name, name + ".index.json"):
      if os.path.exists(os.path.join(folder, candidate)):
        return os.path.join(folder, candidate)
  raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin (nor a sharded "
                  "*.index.json); download the weights too")


def read_weights(path: str) -> dict[str, np.ndarray]:
  """`{name: array}` of a weights file or shard index."""
  if path.endswith(".index.json"):
    with open(path, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out: dict[str, np.ndarray] = {}
    for shard in shards:
      shard_path = os.path.join(os.path.dirname(path), shard)
      if not os.path.exists(shard_path):
        raise UserError(f"{path} names shard {shard}, which is missing")
      out.update(read_weights(shard_path))
    return out
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return load_torch_state_dict(path)


# safetensors' dtype names → numpy dtypes (little-endian, as the format stores them).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": jnp.bfloat16,  # numpy has no bfloat16
    "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2,
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file as read-only views of the file mapped into memory
  (as `transformers` loads them): nothing is read until a tensor is used, so importing a
  model holds no second copy of its weights."""
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_len))
    data = np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) > 8 + header_len else (
        np.zeros(0, np.uint8))
    out = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      start, end = (8 + header_len + o for o in info["data_offsets"])
      out[name] = data[start:end].view(dtype).reshape(info["shape"])
    return out
  except (OSError, ValueError, KeyError, struct.error) as e:
    raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})"
                    ) from None


def stop_token_ids(folder: str, hf_config: dict[str, Any] | None = None) -> tuple[int, ...]:
  """The tokens that end a generated text, as `transformers`' `generate` reads them:
  `eos_token_id` (one id or a list) of the folder's generation_config.json, else of its
  config.json (`hf_config`, if given, stands for that file)."""
  eos = read_json(os.path.join(folder, GENERATION_CONFIG)).get("eos_token_id")
  if eos is None:
    config = read_json(os.path.join(folder, "config.json")) if hf_config is None else hf_config
    eos = config.get("eos_token_id")
  if eos is None:
    return ()
  return tuple(int(t) for t in (eos if isinstance(eos, list) else [eos]))


def read_json(path: str) -> dict[str, Any]:
  """The JSON object in `path`, or {} where it is missing, unreadable or not an object."""
  try:
    with open(path, encoding="utf-8") as f:
      found = json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}
  return found if isinstance(found, dict) else {}
