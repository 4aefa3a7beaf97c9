"""What the families' mapping tables share: a checkpoint's tensors taken
by name (each exactly once), flat `a/b/c` parameter paths, and shape checks.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from reparam_jax.errors import UserError

Flat = dict[str, np.ndarray]  # "block_0/attn/query/kernel" -> array


class Tensors:
  """A Hugging Face state dict, consumed by name.

  `take` hands each tensor out once and remembers where every project
  parameter came from, so errors name the Hugging Face tensor too;
  `unused` lists what no mapping asked for.
  """

  def __init__(self, tensors: dict[str, np.ndarray], where: str):
    self._tensors = dict(tensors)
    self._taken: set[str] = set()
    self.where = where
    self.origin: dict[str, str] = {}  # project path -> HF name(s)

  def has(self, name: str) -> bool:
    return name in self._tensors

  def names(self) -> list[str]:
    return list(self._tensors)

  def take(self, name: str) -> np.ndarray:
    if name not in self._tensors:
      raise UserError(f"{self.where}: parameter {name} is missing from the checkpoint")
    self._taken.add(name)
    return self._tensors[name]

  def unused(self) -> list[str]:
    return sorted(set(self._tensors) - self._taken)


def rename_keys(tensors: dict[str, np.ndarray], strip_prefixes: Iterable[str]) -> dict:
  """Drops a model-class prefix (`transformer.`, `bert.`) and maps old
  TensorFlow-era LayerNorm names (`gamma`/`beta`) to `weight`/`bias`."""
  out = {}
  for name, value in tensors.items():
    for prefix in strip_prefixes:
      if name.startswith(prefix):
        name = name[len(prefix):]
        break
    if name.endswith(".gamma"):
      name = name[:-len("gamma")] + "weight"
    elif name.endswith(".beta"):
      name = name[:-len("beta")] + "bias"
    out[name] = value
  return out


def check_shapes(flat: Flat, expected: dict[str, tuple[int, ...]], origin: dict[str, str],
                 where: str, config_name: str = "config.json") -> None:
  """Every parameter the model expects is present with the expected shape."""
  for path, shape in expected.items():
    if path not in flat:
      raise UserError(f"{where}: the checkpoint provides no value for parameter {path}")
    got = tuple(flat[path].shape)
    if got != tuple(shape):
      src = f" (from {origin[path]})" if path in origin else ""
      raise UserError(f"{where}: parameter {path}{src} has shape {got} but {config_name} "
                      f"implies {tuple(shape)}")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise UserError(f"{where}: parameter {extra[0]} is not part of the model {config_name} "
                    "describes")


def unflatten(flat: Flat) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *heads, last = path.split("/")
    node = tree
    for h in heads:
      node = node.setdefault(h, {})
    node[last] = value
  return tree


def flatten(tree: Any, prefix: str = "") -> Flat:
  out: Flat = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def get(hf: dict[str, Any], key: str, default: Any) -> Any:
  """A config.json field; an explicit null counts as absent."""
  value = hf.get(key)
  return default if value is None else value


def check_tied(src: Tensors, name: str, tied_to: np.ndarray, message: str) -> None:
  """Takes a stored copy of a tied tensor, if any; it must equal what it is tied to.

  `message` is the error, with `{}` where the parameter's name goes.
  """
  if src.has(name):
    value = src.take(name)
    if value.shape != tied_to.shape or not np.array_equal(value, tied_to):
      raise UserError(message.replace("{}", f"parameter {name}"))


# The fields of a GPT-2/BERT-style Transformer (learned positions, LayerNorm, GELU,
# biases, one width, full multi-head attention): what those families cannot express.
PLAIN_TRANSFORMER = {
    "rope": False, "use_bias": True, "embed_proj_dim": 0, "share_layers": False,
    "layer_dims": (), "norm": "layer", "activation": "gelu", "mlp_gated": False,
    "attention_scale": True, "relative_buckets": 0, "sinusoidal": False, "embed_scale": False,
    "tied_logits_scale": False, "num_decoder_layers": 0, "num_kv_heads": 0, "qkv_bias": False,
    "sliding_window": 0, "rope_scaling": ""}


def first_misfit(cfg: Any, required: dict[str, Any]) -> str:
  """"model.F=V (needs W)" for the first field of `required` that `cfg` does not have,
  or "" (what a family's `fits` answers the exporter)."""
  for name, ok in required.items():
    if getattr(cfg, name) != ok:
      return f"model.{name}={getattr(cfg, name)!r} (needs {ok!r})"
  return ""


def plain_misfit(cfg: Any, **own: Any) -> str:
  """`first_misfit` for GPT-2 and BERT: PLAIN_TRANSFORMER's fields and the family's `own`,
  and heads that split the width evenly (those families have no head width of their own;
  `head_size` may still name the even one)."""
  if cfg.head_dim != cfg.embed_dim // cfg.num_heads:
    return f"model.head_size={cfg.head_size} (needs embed_dim // num_heads)"
  return first_misfit(cfg, dict(PLAIN_TRANSFORMER, **own))


def stack_modules(paths: set[str], table: Iterable[tuple[str, str]], hf_layer: str,
                  stack: str = "") -> dict[str, str]:
  """Project module path → HF module name of every layer's linear modules: `table` holds
  (HF module, project path) pairs within a layer, `hf_layer` the HF layer's name with
  `{i}` for its number (`model.layers.{i}.`).  Layers are counted from the tree's
  `node_paths` (`{stack}block_0`, `{stack}block_1`, ...)."""
  ours: dict[str, str] = {}
  i = 0
  while f"{stack}block_{i}" in paths:
    for hf_name, path in table:
      ours[f"{stack}block_{i}/{path}"] = hf_layer.format(i=i) + hf_name
    i += 1
  return ours


def take_lm_head(src: Tensors, put: Any, embedding: np.ndarray, tied: bool,
                 embedding_name: str, where: str) -> None:
  """A decoder's output layer `lm_head.weight` [V, D]: with tied embeddings a stored copy
  must equal the token table (`embedding_name`); untied it becomes `lm_head/kernel`
  [D, V] through `put(path, name, value)`."""
  if tied:
    check_tied(src, "lm_head.weight", embedding,
               f"{where}: {{}} differs from {embedding_name} but config.json says "
               "tie_word_embeddings=true")
  else:
    put("lm_head/kernel", "lm_head.weight", src.take("lm_head.weight").T)


def take_buffers(src: Tensors, buffers: re.Pattern) -> None:
  """Takes the left-over tensors whose names match `buffers` (non-parameter buffers old
  checkpoints stored: causal masks, rotary frequencies)."""
  for name in src.unused():
    if buffers.match(name):
      src.take(name)
