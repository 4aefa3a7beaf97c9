"""LoRA and DoRA adapters in Hugging Face PEFT's format, both ways (docs/peft.md).

A PEFT adapter folder (`peft.PeftModel.save_pretrained`) holds

  adapter_config.json         peft_type "LORA", r, lora_alpha, target_modules,
                              use_rslora, use_dora, rank_pattern, alpha_pattern, ...
  adapter_model.safetensors   base_model.model.<module>.lora_A.weight         [r, d_in]
                              base_model.model.<module>.lora_B.weight         [d_out, r]
                              base_model.model.<module>.lora_magnitude_vector [d_out]  (DoRA)
                              base_model.model.<module>.{weight,bias}   (modules_to_save)

`<module>` is the `transformers` module name (hf/peft_names.py).  torch's
weights are `[d_out, d_in]` and ours `[d_in, d_out]`, so lora_a = lora_Aᵀ and
lora_b = lora_Bᵀ: W₀ + s·A B here is W₀ᵀ + s·B A there, s = alpha/r (alpha/√r
with rsLoRA) in both.  DoRA's magnitude is one value per output unit in both
layouts (PEFT: the norm over dim 1 of `[d_out, d_in]`; here over the d_in axis
of `[d_in, d_out]`), so it copies unchanged.

The functions are pure (arrays in, numpy out; no torch): `export_peft_adapter`
writes a folder from θ params and their reparam rules; `import_peft_adapter`
turns dense params plus a folder into θ params and the rules that describe them.
Exporting works on params split over the processes of a multi-host run: each
process calls it, the adapter's small tensors are gathered one at a time (a
W₀ only when DoRA needs its norm), and process 0 writes the folder.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from flax.core import meta
from jax.experimental import multihost_utils

from reparam_jax.errors import UserError
from reparam_jax.hf.files import read_weights
from reparam_jax.hf.peft_names import Modules, modules
from reparam_jax.pytree.layers import has_stack, unstack_layers
from reparam_jax.pytree.paths import set_path, subtree
from reparam_jax.reparam.api import Reparam
from reparam_jax.reparam.compose import stages
from reparam_jax.reparam.rules import map_theta
from reparam_jax.rundir import sharded

PyTree = Any
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LEGACY_WEIGHTS = "adapter_model.bin"  # PEFT before safetensors became its default
KEY_PREFIX = "base_model.model."
MAGNITUDE_KEY = "lora_magnitude_vector"
MAGNITUDE_THETA = "magnitude"  # the θ entry of the `magnitude` stage (DoRA's m)
# Config fields whose non-default value changes the adapter's function in a way
# this project does not model; each is refused with its name.
_UNSUPPORTED = {"lora_bias": False, "layer_replication": None, "target_parameters": None,
                "trainable_token_indices": None, "use_qalora": False, "use_bdlora": None,
                "alora_invocation_tokens": None}


@dataclasses.dataclass(frozen=True)
class Adapter:
  """One adapted linear layer in the project's layout; its weight is `path/kernel`."""

  path: str
  rank: int
  alpha: float
  rslora: bool
  lora_a: np.ndarray  # [d_in, r]
  lora_b: np.ndarray  # [r, d_out]
  magnitude: np.ndarray | None = None  # [d_out], DoRA
  dropout: float = 0.0  # on the adapter's input, training only

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  def spec(self) -> str:
    """The rule spec that describes this adapter (config.reparam.rules)."""
    rs = ", rslora=True" if self.rslora else ""
    rs += f", dropout={self.dropout!r}" if self.dropout else ""
    return f"lora(rank={self.rank}, alpha={_number(self.alpha)!r}{rs})" + (
        "|magnitude" if self.magnitude is not None else "")


def _np(x: Any) -> np.ndarray:
  """`x` whole on this host as float32 (a collective when `x` spans several processes)."""
  return np.asarray(sharded.host_copy(meta.unbox(x)), np.float32)


def _column_norm(w_DxO: np.ndarray) -> np.ndarray:
  """‖·‖ of each output column of a `[d_in, d_out]` kernel: DoRA's weight norm."""
  return np.linalg.norm(w_DxO.astype(np.float64), axis=0).astype(np.float32)


# --- export ---------------------------------------------------------------------------------

def _read_theta(path: str, rule: Any, theta: Any) -> tuple[Adapter, Any] | None:
  """(adapter, W₀) of one θ whose rule has a lora stage; None for other rules.  The
  factors are gathered to this host; W₀ is left where it is (it can be large)."""
  parts = list(stages(rule.node))
  names = [t.name for t in parts]
  if "lora" not in names:
    return None
  if names not in (["identity", "lora"], ["frozen", "lora"], ["identity", "lora", "magnitude"],
                   ["frozen", "lora", "magnitude"]):
    raise UserError(f"parameter {path}: rule spec {rule.spec!r} has no PEFT counterpart; PEFT "
                    "holds lora(...) (LoRA) or lora(...)|magnitude (DoRA) on a dense weight")
  if not path.endswith("/kernel"):
    raise UserError(f"parameter {path}: PEFT export covers linear kernels only")
  lora = parts[1]
  if not lora.keeps_base:
    # PiSSA/OLoRA/LoftQ store a residual (or quantized) W₀, not the pretrained weight
    # a PEFT user loads as the base model.
    raise UserError(f"parameter {path}: lora(init={lora.init}) trains on a modified base "
                    "W₀, so its A, B do not apply to the pretrained model PEFT loads; export "
                    "the merged model instead (python -m reparam_jax.export_hf --to=...)")
  magnitude = None
  if names[-1] == "magnitude":
    magnitude, theta = _np(theta[MAGNITUDE_THETA]), theta["base"]
  adapter = Adapter(path[:-len("/kernel")], int(lora.rank), float(lora.alpha),
                    bool(getattr(lora, "rslora", False)), _np(theta["lora_a"]),
                    _np(theta["lora_b"]), magnitude, float(getattr(lora, "dropout", 0.0)))
  return adapter, theta["base"]


def collect_adapters(params: PyTree, rp: Reparam) -> list[tuple[Adapter, Any]]:
  """(adapter, W₀) of every weight a lora rule covers, in tree order; W₀ as stored."""
  found: list[tuple[Adapter, Any]] = []

  def visit(path, rule, theta):
    if rule is not None:
      got = _read_theta(path, rule, meta.unbox(theta))
      if got is not None:
        found.append(got)
    return theta

  map_theta(rp.plan, params, visit, require_all=True)
  if not found:
    raise UserError("no LoRA parameters to export: config.reparam.rules has no rule with a "
                    "lora stage (e.g. (r'block_\\d+/attn/(query|value)/kernel', "
                    "'lora(rank=8, alpha=16)'))")
  return found


def _most_common(values: Sequence[Any]) -> Any:
  return collections.Counter(values).most_common(1)[0][0]


def _number(x: float) -> int | float:
  return int(x) if float(x).is_integer() else float(x)


def _targets(names: list[str], table: Modules) -> list[str] | str:
  """PEFT's target_modules: short names (`query`) where they pick exactly the adapted
  modules, else a regex PEFT full-matches against module names."""
  short = sorted({n.rsplit(".", 1)[-1] for n in names})
  picked = {n for n in table.ours.values() if n.rsplit(".", 1)[-1] in short}
  if picked == set(names):
    return short
  return "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"


def export_peft_adapter(params: PyTree, reparam: Reparam | Any, out_dir: str, *,
                        base_model_name_or_path: str | None = None,
                        modules_to_save: Sequence[str] | str = "auto") -> dict[str, Any]:
  """Writes `out_dir`/{adapter_config.json, adapter_model.safetensors} for `params`.

  `params`: θ params (boxed or not) of a BERT, Llama-family or T5 model
  (hf/peft_names.py) whose `reparam` (a `Reparam` or a config.reparam section) puts `lora(...)` or
  `lora(...)|magnitude` on some kernels; `transformers` loads the base model
  (the same W₀) and `peft.PeftModel.from_pretrained(base, out_dir)` the adapter.
  Ranks and alphas may differ per layer (written as rank_pattern / alpha_pattern);
  rsLoRA must be all or none.  With any DoRA layer the whole adapter is DoRA
  (a plain LoRA layer gets the magnitude ‖W₀ + s·A B‖, which DoRA maps to itself).
  `modules_to_save`: project module paths written whole (PEFT's modules_to_save,
  e.g. a trained classifier); "auto" = `classifier/out` when the model has one.
  Returns a summary (modules, tensors, config).
  """
  rp = reparam if isinstance(reparam, Reparam) else Reparam.from_config(reparam)
  tree = meta.unbox(params)
  table = modules(tree)
  found = collect_adapters(tree, rp)
  rslora = {a.rslora for a, _ in found}
  if len(rslora) > 1:
    mixed = next(a.path for a, _ in found if a.rslora)
    raise UserError(f"parameter {mixed}/kernel uses rslora=True but other LoRA layers do not; "
                    "PEFT's use_rslora holds for the whole adapter")
  dora = any(a.magnitude is not None for a, _ in found)
  r = _most_common([a.rank for a, _ in found])
  alpha = _most_common([a.alpha for a, _ in found])
  tensors: dict[str, np.ndarray] = {}
  rank_pattern: dict[str, int] = {}
  alpha_pattern: dict[str, int | float] = {}
  names = []
  for a, w0 in found:
    name = table.hf_name(a.path)
    names.append(name)
    key = f"{KEY_PREFIX}{name}"
    tensors[f"{key}.lora_A.weight"] = a.lora_a.T
    tensors[f"{key}.lora_B.weight"] = a.lora_b.T
    if dora:
      m = a.magnitude if a.magnitude is not None else _column_norm(  # one W₀ on the host
          _np(w0) + a.scale * (a.lora_a @ a.lora_b))
      tensors[f"{key}.{MAGNITUDE_KEY}"] = m
    if a.rank != r:
      rank_pattern[name] = a.rank
    if a.alpha != alpha:
      alpha_pattern[name] = _number(a.alpha)

  if modules_to_save == "auto":
    modules_to_save = [p for p in ("classifier/out",) if p in table.ours]
  saved = []
  if modules_to_save:
    adapted = {a.path for a, _ in found}
    dense = sharded.apply_spread(rp.to_dense, tree)
    for path in modules_to_save:
      name = table.hf_name(path)
      if path in adapted:
        raise UserError(f"modules_to_save: {path} also has a LoRA adapter; PEFT keeps one or "
                        "the other per module")
      tensors[f"{KEY_PREFIX}{name}.weight"] = _np(subtree(dense, f"{path}/kernel")).T
      bias = subtree(dense, f"{path}/bias")
      if bias is not None:
        tensors[f"{KEY_PREFIX}{name}.bias"] = _np(bias)
      saved.append(name.rsplit(".", 1)[-1] if path == "classifier/out" else name)

  task_type = "SEQ_CLS" if "classifier/out" in table.ours else None
  config = {
      "peft_type": "LORA", "task_type": task_type,
      "base_model_name_or_path": base_model_name_or_path, "revision": None,
      "r": r, "lora_alpha": _number(alpha), "use_rslora": rslora.pop(), "use_dora": dora,
      "target_modules": _targets(names, table), "rank_pattern": rank_pattern,
      "alpha_pattern": alpha_pattern, "bias": "none", "lora_bias": False,
      "lora_dropout": _most_common([a.dropout for a, _ in found]),
      "fan_in_fan_out": False, "modules_to_save": saved or None, "init_lora_weights": True,
      "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
  }
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
  if jax.process_index() == 0:  # every process holds the same tensors; one writes them
    os.makedirs(out_dir, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS),
                                metadata={"format": "pt"})
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
  if jax.process_count() > 1:  # every process returns once the folder is complete
    multihost_utils.sync_global_devices("reparam_jax:export_peft_adapter")
  return {"modules": len(found), "tensors": len(tensors),
          "values": sum(v.size for v in tensors.values()), "config": config}


# --- import ---------------------------------------------------------------------------------

def read_peft_folder(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(adapter_config.json, {key: array}) of a PEFT adapter folder, checked for what
  this project can represent (one-line UserError naming the field otherwise)."""
  path = os.path.join(folder, ADAPTER_CONFIG)
  if not os.path.isdir(folder):
    raise UserError(f"PEFT adapter folder {folder} is not a directory")
  if not os.path.exists(path):
    raise UserError(f"{folder} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder "
                    "(PeftModel.save_pretrained)?")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None
  if config.get("peft_type") != "LORA":
    raise UserError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA adapters "
                    "(LoRA, rsLoRA, DoRA) can be imported")
  if config.get("bias", "none") != "none":
    raise UserError(f"{path}: bias={config['bias']!r}; only bias='none' can be imported "
                    "(the project's LoRA trains no biases)")
  for field, default in _UNSUPPORTED.items():
    if config.get(field, default) not in (default, {}, []):
      raise UserError(f"{path}: {field}={config[field]!r} is not supported (only {default!r})")
  for name in (ADAPTER_WEIGHTS, LEGACY_WEIGHTS):
    if os.path.exists(os.path.join(folder, name)):
      return config, read_weights(os.path.join(folder, name))
  raise UserError(f"{folder} has no {ADAPTER_WEIGHTS} (nor {LEGACY_WEIGHTS})")


def _pattern_value(pattern: Mapping[str, Any], name: str, default: Any) -> Any:
  """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the end of the
  module name at a '.' boundary (peft.utils.other.get_pattern_key)."""
  for key, value in (pattern or {}).items():
    if re.match(rf"(.*\.)?({key})$", name):
      return value
  return default


def _check_targets(targets: Any, table: Modules, where: str) -> None:
  if targets is None:
    return
  names = list(table.ours.values())
  unprefixed = [n.removeprefix(table.backbone_prefix)
                for n in names]
  if isinstance(targets, str):
    if targets == "all-linear":
      return
    if not any(re.fullmatch(targets, n) for n in names + unprefixed):
      raise UserError(f"{where}: target_modules={targets!r} matches no linear module of this "
                      f"model (e.g. {names[0]})")
    return
  for t in targets:
    if not any(n == t or n.endswith("." + t) for n in names):
      short = sorted({n.rsplit(".", 1)[-1] for n in names})
      raise UserError(f"{where}: target module {t!r} is not a linear module of this model "
                      f"(its modules: {', '.join(short)})")


_SUFFIXES = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B",
             f".{MAGNITUDE_KEY}": "magnitude", f".{MAGNITUDE_KEY}.weight": "magnitude"}


def _parse_keys(tensors: dict[str, np.ndarray], saved: set[str], where: str
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
  """({module: {lora_A, lora_B, magnitude}}, {module.weight|bias: array of modules_to_save})."""
  lora: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
  whole: dict[str, np.ndarray] = {}
  for key, value in tensors.items():
    if not key.startswith(KEY_PREFIX):
      raise UserError(f"{where}: tensor {key} does not start with {KEY_PREFIX!r}; not a PEFT "
                      "LoRA adapter of a transformers model")
    name = key[len(KEY_PREFIX):]
    for suffix, part in _SUFFIXES.items():
      if name.endswith(suffix):
        lora[name[:-len(suffix)]][part] = np.asarray(value, np.float32)
        break
    else:
      module = name.rsplit(".", 1)[0]
      if module.rsplit(".", 1)[-1] in saved or module in saved:
        whole[name] = np.asarray(value, np.float32)
      else:
        raise UserError(f"{where}: tensor {key} is neither a LoRA factor (lora_A, lora_B, "
                        f"{MAGNITUDE_KEY}) nor part of modules_to_save; not supported")
  return lora, whole


def _rules_for(adapters: list[Adapter]) -> tuple[tuple[str, str], ...]:
  """config.reparam.rules for the adapters: one rule per distinct spec, its regex
  naming the layers as `block_\\d+/attn/(query|value)/kernel` where it can."""
  blocks = {int(m.group(1)) for a in adapters if (m := re.match(r"block_(\d+)/", a.path))}
  rules = []
  by_spec: dict[str, list[str]] = collections.defaultdict(list)
  for a in adapters:
    by_spec[a.spec()].append(a.path)
  for spec, paths in by_spec.items():
    # rest of the path -> the blocks it is adapted in
    per_rest: dict[str, set[int]] = collections.defaultdict(set)
    others = []
    for p in paths:
      m = re.fullmatch(r"block_(\d+)/(.*)", p)
      if m:
        per_rest[m.group(2)].add(int(m.group(1)))
      else:
        others.append(re.escape(p))
    by_layers: dict[tuple[int, ...], list[str]] = collections.defaultdict(list)
    for rest, layers in per_rest.items():
      by_layers[tuple(sorted(layers))].append(re.escape(rest))
    alts = list(others)
    for layers, rests in by_layers.items():
      layer_re = r"\d+" if set(layers) == blocks and len(blocks) > 1 else (
          "(" + "|".join(map(str, layers)) + ")" if len(layers) > 1 else str(layers[0]))
      rest_re = rests[0] if len(rests) == 1 else "(" + "|".join(sorted(rests)) + ")"
      alts.append(f"block_{layer_re}/{rest_re}")
    pattern = alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"
    rules.append((f"{pattern}/kernel", spec))
  return tuple(rules)


def import_peft_adapter(folder: str, params: PyTree, model_params: PyTree | None = None
                        ) -> tuple[PyTree, tuple[tuple[str, str], ...]]:
  """(θ params, config.reparam.rules) of dense `params` (a BERT, Llama-family or T5 model)
  with the PEFT adapter in `folder`.

  `params` are the base model's dense params (e.g. `hf.importer.import_folder`
  of the folder named by the adapter's base_model_name_or_path).  Each adapted
  kernel becomes θ = {base: W₀, lora_a, lora_b} (DoRA: {base: that, magnitude});
  modules_to_save replace the dense weights they name.  The rules
  (`lora(rank=.., alpha=..[, rslora=True])[|magnitude]`, one per distinct
  rank/alpha) make `Reparam.from_config({'rules': rules})` compute with them,
  e.g. `--config.reparam.rules=...` to keep training.

  `model_params`: the params (dense or θ, stacked layers or not; shapes suffice)
  of the model the result is for, when it has modules `params` lack: a
  classifier head the base folder has no weights for.  Module names are then
  read from the model's tree, and a modules_to_save tensor of such a module
  (PEFT's SEQ_CLS `classifier`) is added to the result at the model's path.
  """
  config, tensors = read_peft_folder(folder)
  where = os.path.join(folder, ADAPTER_WEIGHTS)
  tree = meta.unbox(params)
  model = None if model_params is None else _unrolled_shapes(model_params)
  table = modules(tree if model is None else model)
  _check_targets(config.get("target_modules"), table, os.path.join(folder, ADAPTER_CONFIG))
  saved = set(config.get("modules_to_save") or ())
  lora, whole = _parse_keys(tensors, saved, where)
  if not lora:
    raise UserError(f"{where} holds no lora_A / lora_B tensors")
  dora, rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
  r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
  out = _copy_dicts(tree)
  adapters = []
  for name, parts in lora.items():
    key = f"{KEY_PREFIX}{name}"
    path = table.our_path(name)
    if path is None:
      example = next(iter(table.ours.values()))
      raise UserError(f"{where}: tensor {key}.lora_A.weight adapts module {name}, which is not "
                      f"a linear module of this model (e.g. {example})")
    for part in ("lora_A", "lora_B") + (("magnitude",) if dora else ()):
      if part not in parts:
        what = MAGNITUDE_KEY if part == "magnitude" else f"{part}.weight"
        raise UserError(f"{where}: {key}.{what} is missing (use_dora={dora})")
    if "magnitude" in parts and not dora:
      raise UserError(f"{where}: {key}.{MAGNITUDE_KEY} present but use_dora is false")
    w0 = subtree(out, f"{path}/kernel")
    if isinstance(w0, Mapping):
      raise UserError(f"parameter {path}/kernel is already reparameterized; import a PEFT "
                      "adapter into the base model's dense params")
    d_in, d_out = w0.shape
    a, b = parts["lora_A"], parts["lora_B"]
    rank = a.shape[0]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != d_in or b.shape != (d_out, rank):
      raise UserError(f"{where}: {key}.lora_A.weight {a.shape} / lora_B.weight {b.shape} do not "
                      f"fit parameter {path}/kernel {tuple(w0.shape)} (expected [r, {d_in}] and "
                      f"[{d_out}, r])")
    want = int(_pattern_value(config.get("rank_pattern"), name, r))
    if rank != want:
      raise UserError(f"{where}: {key}.lora_A.weight has rank {rank} but adapter_config.json "
                      f"says r={want} for module {name} (r / rank_pattern)")
    m = parts.get("magnitude")
    if m is not None and m.shape != (d_out,):
      raise UserError(f"{where}: {key}.{MAGNITUDE_KEY} has shape {m.shape}, parameter "
                      f"{path}/kernel needs ({d_out},)")
    adapter = Adapter(path, rank, float(_pattern_value(config.get("alpha_pattern"), name, alpha)),
                      rslora, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), m,
                      float(config.get("lora_dropout") or 0.0))
    theta: dict[str, Any] = {"base": np.asarray(w0), "lora_a": adapter.lora_a,
                             "lora_b": adapter.lora_b}
    if m is not None:
      theta = {"base": theta, MAGNITUDE_THETA: m}
    set_path(out, f"{path}/kernel", theta)
    adapters.append(adapter)
  for name, value in whole.items():
    module, leaf = name.rsplit(".", 1)
    path = table.our_path(module)
    if path is None or leaf not in ("weight", "bias"):
      hint = ("; the base has no classifier: pass the params of the model with one "
              "(model_params)" if module == "classifier" and model is None else "")
      raise UserError(f"{where}: modules_to_save tensor {KEY_PREFIX}{name} has no place in this "
                      f"model{hint}")
    ours = f"{path}/kernel" if leaf == "weight" else f"{path}/bias"
    old = subtree(out, ours)
    if old is None and model is not None:  # a head the model has and the base lacks
      _check_head(model, path, f"{where}: modules_to_save tensor {KEY_PREFIX}{name}")
      old = subtree(model, ours)
    new = value.T if leaf == "weight" else value
    if (path == "classifier/out" and old is not None and not isinstance(old, Mapping)
        and tuple(np.shape(old))[-1:] != new.shape[-1:]):
      raise UserError(f"{where}: modules_to_save tensor {KEY_PREFIX}{name} is a classifier for "
                      f"{new.shape[-1]} classes but this model's classifier/out has "
                      f"{np.shape(old)[-1]} (encoder.num_classes, the task's labels); use an "
                      f"adapter trained for {np.shape(old)[-1]} labels (num_labels)")
    if old is None or isinstance(old, Mapping) or tuple(np.shape(old)) != new.shape:
      raise UserError(f"{where}: modules_to_save tensor {KEY_PREFIX}{name} {value.shape} does "
                      f"not fit parameter {ours}")
    set_path(out, ours, np.ascontiguousarray(new), create=True)
  return out, _rules_for(adapters)


def _unrolled_shapes(params: PyTree) -> PyTree:
  """The shapes of `params` (boxed or not) in the unrolled layout (`block_{i}`)."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), meta.unbox(params))
  return unstack_layers(shapes) if has_stack(shapes) else shapes


def _check_head(model: PyTree, path: str, what: str) -> None:
  """UserError unless the model's classifier at `path` computes what PEFT's saved one does:
  Hugging Face's BertForSequenceClassification has dropout → linear on the pooled output."""
  if path != "classifier/out":
    return
  extra = sorted(set(subtree(model, "classifier") or {}) - {"out"})
  if extra:
    raise UserError(f"{what} is Hugging Face's classifier (dropout -> linear) but this model's "
                    f"classifier also has {', '.join(extra)}; set encoder.classifier_norm=False "
                    "and encoder.classifier_feature_proj_dim=0")


def _copy_dicts(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _copy_dicts(v) for k, v in tree.items()}
  return tree


def start_from_adapter(folder: str, dense_params: PyTree, rp: Reparam,
                       model_params: PyTree | None = None) -> PyTree:
  """`import_peft_adapter` for a run whose config.reparam.rules must already describe the
  adapter (a `config.init_adapter` next to `config.init_from`): each adapted kernel's rule
  needs the folder's rank, alpha, rsLoRA and DoRA, else a UserError with the rules to use.
  θ the result holds passes `Reparam.adopt_dense` unchanged.  `model_params`: the run's
  (fresh) params, whose classifier head receives the folder's saved `classifier` (a
  SEQ_CLS adapter's modules_to_save) though `dense_params` (a base model) has none."""
  theta, rules = import_peft_adapter(folder, dense_params, model_params)
  want = Reparam.from_config({"rules": rules})

  def visit(path, rule, node):
    mine = rp.plan.match(path)
    if not _same_adapter(rule.node, None if mine is None else mine.node):
      raise UserError(f"init_adapter={folder} puts {rule.spec!r} on {path} but "
                      f"config.reparam.rules gives it {mine.spec if mine else 'no rule'!r}; "
                      f"use --config.reparam.rules=\"{rules!r}\"")
    return node

  map_theta(want.plan, theta, lambda p, r, n: n if r is None else visit(p, r, n))
  return theta


def _same_adapter(theirs: Any, mine: Any) -> bool:
  """Whether two rule nodes are the same LoRA/DoRA function (dropout may differ)."""
  if mine is None:
    return False
  a, b = list(stages(theirs)), list(stages(mine))
  if [t.name for t in a][1:] != [t.name for t in b][1:] or b[0].name not in ("identity",
                                                                              "frozen"):
    return False
  la, lb = a[1], b[1]
  return (la.rank, float(la.alpha), la.rslora, lb.keeps_base) == (
      lb.rank, float(lb.alpha), lb.rslora, True)
