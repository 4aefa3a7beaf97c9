"""LoRA and DoRA adapters in Hugging Face PEFT's format, both ways; VeRA and (IA)³ too
(peft_type VERA, IA3: `_vera_fields`, `_ia3_fields`, `_place_vera`, `_place_ia3`)
(docs/peft.md).

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
of `[d_in, d_out]`), so it copies unchanged.  GPT-2's fused `c_attn` (q|k|v output columns) is
split over query/key/value on import and written in block form on export
(`_split_fused`, `_fuse_lora`).

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
VERA_PAIR_PREFIX = "base_model."  # VeRA's shared pair: base_model.vera_A, base_model.vera_B
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
                    "lora, vera or ia3 stage (e.g. (r'block_\\d+/attn/(query|value)/kernel', "
                    "'lora(rank=8, alpha=16)'))")
  return found


VECTOR_KINDS = ("vera", "ia3")  # PEFT's VERA and IA3 adapters: trained vectors on W₀


@dataclasses.dataclass(frozen=True)
class VectorAdapter:
  """One `vera(...)` or `ia3(...)` weight; `stage` is its transform, `theta` its θ."""

  path: str
  stage: Any
  theta: Mapping[str, Any]


def _adapter_kind(params: PyTree, rp: Reparam) -> str:
  """"lora", "vera" or "ia3": the adapter type the rules put on `params` (one per folder)."""
  kinds: dict[str, str] = {}

  def visit(path, rule, theta):
    if rule is not None:
      names = [t.name for t in stages(rule.node)]
      for kind in ("lora",) + VECTOR_KINDS:
        if kind in names:
          kinds.setdefault(kind, path)
    return theta

  map_theta(rp.plan, params, visit, require_all=True, visit_only=True)
  if len(kinds) > 1:
    (a, pa), (b, pb) = list(kinds.items())[:2]
    raise UserError(f"parameters {pa} ({a}) and {pb} ({b}) hold different adapter types; a "
                    "PEFT adapter folder holds one (LORA, VERA or IA3): export them separately")
  return next(iter(kinds), "lora")


def collect_vector_adapters(params: PyTree, rp: Reparam, kind: str) -> list[VectorAdapter]:
  """Every weight a `vera` or `ia3` rule (`kind`) covers, in tree order, θ gathered to
  this host; UserError for a rule PEFT has no counterpart of."""
  found: list[VectorAdapter] = []

  def visit(path, rule, theta):
    if rule is None:
      return theta
    parts = list(stages(rule.node))
    names = [t.name for t in parts]
    if kind not in names:
      return theta
    if names not in (["identity", kind], ["frozen", kind]):
      raise UserError(f"parameter {path}: rule spec {rule.spec!r} has no PEFT counterpart; PEFT "
                      f"holds {kind}(...) on a dense weight")
    if not path.endswith("/kernel"):
      raise UserError(f"parameter {path}: PEFT export covers linear kernels only")
    theta = meta.unbox(theta)
    found.append(VectorAdapter(path[:-len("/kernel")], parts[1],
                               {k: (theta[k] if k == "base" else _np(theta[k])) for k in theta}))
    return theta

  map_theta(rp.plan, params, visit, require_all=True)
  return found


def adapter_bases(params: PyTree, rp: Reparam) -> dict[str, Any]:
  """{kernel path: W₀ as stored} of every adapted weight (LoRA, VeRA or (IA)³)."""
  kind = _adapter_kind(params, rp)
  if kind == "lora":
    return {f"{a.path}/kernel": w0 for a, w0 in collect_adapters(params, rp)}
  return {f"{v.path}/kernel": v.theta["base"]
          for v in collect_vector_adapters(params, rp, kind)}


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
  return "(?:" + "|".join(re.escape(n) for n in sorted(set(names))) + ")"


class _Dense:
  """The model's dense weights, computed once and only when asked for (a W₀ of a fused
  module's unadapted block, a bias, modules_to_save)."""

  def __init__(self, tree: PyTree, rp: Reparam):
    self._tree, self._rp, self._dense = tree, rp, None

  def __call__(self, path: str) -> Any:
    if self._dense is None:
      self._dense = sharded.apply_spread(self._rp.to_dense, self._tree)
    return subtree(self._dense, path)


def _by_module(paths: Sequence[str], table: Modules) -> dict[str, list[str]]:
  """HF module name → the adapted project paths it holds, in tree order."""
  out: dict[str, list[str]] = {}
  for path in paths:
    out.setdefault(table.hf_name(path), []).append(path)
  return out


def _fuse_lora(name: str, blocks: tuple[str, ...], adapted: Mapping[str, Adapter],
               dora: bool, dense: _Dense) -> Adapter:
  """One adapter for the fused module `name` whose output column blocks are the project
  modules `blocks`: rank R = Σ rᵢ in block form, A = [A_q; A_k; A_v] and B =
  blockdiag(B_q, B_k, B_v) (zero blocks for unadapted modules).  Its alpha makes PEFT's
  one scale equal the first block's sᵢ (alpha = alpha₁·R/r₁, or ·√R/√r₁ with rsLoRA);
  another block's B is multiplied by sᵢ/s.  Blocks with one A and scale (as
  `_split_fused` makes of a PEFT adapter) are written as that rank-r adapter."""
  del name
  present = [adapted[p] for p in blocks if p in adapted]
  first = present[0]  # rsLoRA is all or none (_lora_fields)
  # Blocks that share A and the scale (a PEFT c_attn adapter imported here) are that
  # adapter: A once, B = [B_q | B_k | B_v], rank r.
  shared = all(a.rank == first.rank and a.scale == first.scale
               and np.array_equal(a.lora_a, first.lora_a) for a in present)
  rank = first.rank if shared else sum(a.rank for a in present)
  alpha = (first.alpha * math.sqrt(rank) / math.sqrt(first.rank) if first.rslora
           else first.alpha * rank / first.rank)
  scale = alpha / (math.sqrt(rank) if first.rslora else rank)  # as PEFT computes it
  widths = [adapted[p].lora_b.shape[1] if p in adapted else int(np.shape(dense(f"{p}/kernel"))[1])
            for p in blocks]
  lora_a = first.lora_a if shared else np.concatenate([a.lora_a for a in present], axis=1)
  lora_b = np.zeros((rank, sum(widths)), np.float32)
  mags = []
  row = col = 0
  for path, width in zip(blocks, widths):
    a = adapted.get(path)
    if a is not None:
      b = a.lora_b if a.scale == scale else a.lora_b * np.float32(a.scale / scale)
      lora_b[row:row + a.rank, col:col + width] = b
      row += 0 if shared else a.rank
    if dora:
      if a is not None and a.magnitude is not None:
        mags.append(a.magnitude)
      else:  # ‖W₀ + s·A B‖ (or ‖W₀‖): DoRA then computes exactly this block's weight
        w = _np(dense(f"{path}/kernel"))
        mags.append(_column_norm(w if a is None else w + a.scale * (a.lora_a @ a.lora_b)))
    col += width
  return Adapter(blocks[0], rank, alpha, first.rslora, lora_a, lora_b,
                 np.concatenate(mags) if dora else None,
                 _most_common([a.dropout for a in present]))


def _lora_fields(tree: PyTree, rp: Reparam, table: Modules, dense: _Dense
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str], set[str]]:
  """(tensors, adapter_config fields, adapted HF module names, adapted project paths) of a
  LoRA / DoRA export."""
  found = collect_adapters(tree, rp)
  rslora = {a.rslora for a, _ in found}
  if len(rslora) > 1:
    mixed = next(a.path for a, _ in found if a.rslora)
    raise UserError(f"parameter {mixed}/kernel uses rslora=True but other LoRA layers do not; "
                    "PEFT's use_rslora holds for the whole adapter")
  dora = any(a.magnitude is not None for a, _ in found)
  adapted = {a.path: a for a, _ in found}
  w0s = {a.path: w0 for a, w0 in found}
  per_module: list[tuple[str, Adapter, Any]] = []
  for name, paths in _by_module(list(adapted), table).items():
    blocks = table.fused(name)
    if len(blocks) > 1:
      per_module.append((name, _fuse_lora(name, blocks, adapted, dora, dense), None))
    else:
      per_module.append((name, adapted[paths[0]], w0s[paths[0]]))
  r = _most_common([a.rank for _, a, _ in per_module])
  alpha = _most_common([a.alpha for _, a, _ in per_module])
  tensors: dict[str, np.ndarray] = {}
  rank_pattern: dict[str, int] = {}
  alpha_pattern: dict[str, int | float] = {}
  for name, a, w0 in per_module:
    key = f"{KEY_PREFIX}{name}"
    tensors[f"{key}.lora_A.weight"] = a.lora_a.T
    tensors[f"{key}.lora_B.weight"] = a.lora_b.T
    if dora:
      tensors[f"{key}.{MAGNITUDE_KEY}"] = a.magnitude if a.magnitude is not None else (
          _column_norm(_np(w0) + a.scale * (a.lora_a @ a.lora_b)))  # one W₀ on the host
    if a.rank != r:
      rank_pattern[name] = a.rank
    if a.alpha != alpha:
      alpha_pattern[name] = _number(a.alpha)
  names = [n for n, _, _ in per_module]
  fields = {
      "r": r, "lora_alpha": _number(alpha), "use_rslora": rslora.pop(), "use_dora": dora,
      "target_modules": _targets(names, table), "rank_pattern": rank_pattern,
      "alpha_pattern": alpha_pattern, "bias": "none", "lora_bias": False,
      "lora_dropout": _most_common([a.dropout for a, _ in found]),
      "fan_in_fan_out": table.fan_in_fan_out, "init_lora_weights": True,
      "layers_to_transform": None, "layers_pattern": None,
  }
  return tensors, fields, names, set(adapted)


def _vera_fields(tree: PyTree, rp: Reparam, table: Modules
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str], set[str]]:
  """(tensors, adapter_config fields, adapted HF module names, adapted project paths) of a
  VeRA export: λ_d, λ_b per module and the shared pair (save_projection), which is ours."""
  from reparam_jax.reparam.transforms.vera import projections
  found = collect_vector_adapters(tree, rp, "vera")
  first = found[0]
  fans = {}
  for v in found:
    name = table.hf_name(v.path)
    if len(table.fused(name)) > 1:
      raise UserError(f"parameter {v.path}/kernel: PEFT's VeRA on the fused {name} slices one "
                      "projection B over its q|k|v outputs, which per-projection vera rules do "
                      "not reproduce; put vera on the other linear modules, or use lora")
    for field in ("rank", "seed"):
      if getattr(v.stage, field) != getattr(first.stage, field):
        raise UserError(f"parameters {first.path} and {v.path}: vera {field}="
                        f"{getattr(first.stage, field)} and {getattr(v.stage, field)}; PEFT's "
                        f"VeRA shares one projection pair, so one {field} for all layers")
    fans[v.path] = v.stage.fan_in or int(np.shape(v.theta["base"])[0])
  if len(set(fans.values())) > 1:
    raise UserError(f"vera layers scale their projection A by fan-ins {sorted(set(fans.values()))}"
                    " (fan_in=0 uses each layer's d_in); PEFT slices one shared A, so set "
                    f"vera(fan_in={max(fans.values())}) on every layer")
  d_ins = [int(np.shape(v.theta["base"])[0]) for v in found]
  d_outs = [int(v.theta["vera_b"].shape[0]) for v in found]
  rank = int(first.stage.rank)
  # PEFT slices A[:, :d_in] and B[:d_out] of a pair sized for its largest layer; ours
  # are the same leading slices of the counter-based pair (transforms/vera.py).
  proj_a, proj_b = projections(int(first.stage.seed), rank, max(d_ins), max(d_outs),
                               fans[first.path])
  tensors = {f"{VERA_PAIR_PREFIX}vera_A": np.asarray(proj_a).T,
             f"{VERA_PAIR_PREFIX}vera_B": np.asarray(proj_b).T}
  names = []
  for v in found:
    name = table.hf_name(v.path)
    names.append(name)
    tensors[f"{KEY_PREFIX}{name}.vera_lambda_d"] = v.theta["vera_d"]
    tensors[f"{KEY_PREFIX}{name}.vera_lambda_b"] = v.theta["vera_b"]
  # projection_prng_key: PEFT loads the saved pair and ignores it; import reads our seed back.
  fields = {"r": rank, "target_modules": _targets(names, table),
            "projection_prng_key": int(first.stage.seed),
            "save_projection": True, "vera_dropout": 0.0, "d_initial": float(first.stage.d_initial),
            "fan_in_fan_out": table.fan_in_fan_out, "bias": "none", "init_weights": True,
            "layers_to_transform": None, "layers_pattern": None}
  return tensors, fields, names, {v.path for v in found}


def _ia3_fields(tree: PyTree, rp: Reparam, table: Modules, dense: _Dense
                ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str], set[str]]:
  """(tensors, adapter_config fields, adapted HF module names, adapted project paths) of an
  (IA)³ export: ia3_l per module, `feedforward_modules` the side=input ones."""
  found = collect_vector_adapters(tree, rp, "ia3")
  adapted = {v.path: v for v in found}
  tensors: dict[str, np.ndarray] = {}
  feedforward = []
  for v in found:
    bias = dense(f"{v.path}/bias")
    if v.stage.side == "output" and bias is not None and np.any(_np(bias) != 0):
      # PEFT scales the whole output, bias included: (x W₀ + b) ⊙ l (transforms/ia3.py).
      raise UserError(f"parameter {v.path}/kernel: ia3(side=output) on a layer with a non-zero "
                      "bias computes x W₀ ⊙ l + b, PEFT's IA3 (x W₀ + b) ⊙ l; no IA3 adapter "
                      "reproduces it (docs/vector_adapters.md)")
  names = []
  for name, paths in _by_module(list(adapted), table).items():
    names.append(name)
    blocks = table.fused(name)
    if len(blocks) > 1:
      sides = {adapted[p].stage.side for p in paths}
      if sides != {"output"}:
        raise UserError(f"parameters {', '.join(paths)}: ia3(side=input) on part of the fused "
                        f"{name}, whose input is shared; use side=output there")
      l = np.concatenate([adapted[p].theta["ia3_l"] if p in adapted else
                          np.ones((int(np.shape(dense(f"{p}/kernel"))[1]),), np.float32)
                          for p in blocks])
      side = "output"
    else:
      l, side = adapted[paths[0]].theta["ia3_l"], adapted[paths[0]].stage.side
    tensors[f"{KEY_PREFIX}{name}.ia3_l"] = l[:, None] if side == "output" else l[None, :]
    if side == "input":
      feedforward.append(name)
  # Full names in both lists: PEFT wants feedforward_modules ⊆ target_modules.
  fields = {"target_modules": sorted(names), "feedforward_modules": sorted(feedforward),
            "fan_in_fan_out": table.fan_in_fan_out, "init_ia3_weights": True,
            "exclude_modules": None}
  return tensors, fields, names, set(adapted)


def export_peft_adapter(params: PyTree, reparam: Reparam | Any, out_dir: str, *,
                        base_model_name_or_path: str | None = None,
                        modules_to_save: Sequence[str] | str = "auto") -> dict[str, Any]:
  """Writes `out_dir`/{adapter_config.json, adapter_model.safetensors} for `params`.

  `params`: θ params (boxed or not) of a BERT, GPT-2, Llama-family or T5 model
  (hf/peft_names.py) whose `reparam` (a `Reparam` or a config.reparam section)
  puts `lora(...)` or `lora(...)|magnitude` (a LORA adapter), `vera(...)` (VERA)
  or `ia3(...)` (IA3) on some kernels; `transformers` loads the base model
  (the same W₀) and `peft.PeftModel.from_pretrained(base, out_dir)` the adapter.
  LoRA ranks and alphas may differ per layer (written as rank_pattern /
  alpha_pattern); rsLoRA must be all or none.  With any DoRA layer the whole
  adapter is DoRA (a plain LoRA layer gets the magnitude ‖W₀ + s·A B‖, which
  DoRA maps to itself).  GPT-2's query/key/value adapters become one `c_attn`
  adapter in block form (`_fuse_lora`).
  `modules_to_save`: project module paths written whole (PEFT's modules_to_save,
  e.g. a trained classifier); "auto" = `classifier/out` when the model has one.
  Returns a summary (modules, tensors, config).
  """
  rp = reparam if isinstance(reparam, Reparam) else Reparam.from_config(reparam)
  tree = meta.unbox(params)
  table = modules(tree)
  dense = _Dense(tree, rp)
  kind = _adapter_kind(tree, rp)
  if kind == "lora":
    tensors, fields, names, adapted = _lora_fields(tree, rp, table, dense)
  elif kind == "vera":
    tensors, fields, names, adapted = _vera_fields(tree, rp, table)
  else:
    tensors, fields, names, adapted = _ia3_fields(tree, rp, table, dense)

  if modules_to_save == "auto":
    modules_to_save = [p for p in ("classifier/out",) if p in table.ours]
  saved = []
  for path in modules_to_save or ():
    name = table.hf_name(path)
    if path in adapted:
      raise UserError(f"modules_to_save: {path} also has a {kind} adapter; PEFT keeps one or "
                      "the other per module")
    tensors[f"{KEY_PREFIX}{name}.weight"] = _np(dense(f"{path}/kernel")).T
    bias = dense(f"{path}/bias")
    if bias is not None:
      tensors[f"{KEY_PREFIX}{name}.bias"] = _np(bias)
    saved.append(name.rsplit(".", 1)[-1] if path == "classifier/out" else name)

  task_type = "SEQ_CLS" if "classifier/out" in table.ours else None
  config = {"peft_type": {"lora": "LORA", "vera": "VERA", "ia3": "IA3"}[kind],
            "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
            "revision": None, **fields, "modules_to_save": saved or None,
            "inference_mode": True}
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
  if jax.process_index() == 0:  # every process holds the same tensors; one writes them
    os.makedirs(out_dir, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS),
                                metadata={"format": "pt"})
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
  if jax.process_count() > 1:  # every process returns once the folder is complete
    multihost_utils.sync_global_devices("reparam_jax:export_peft_adapter")
  return {"modules": len(names), "tensors": len(tensors),
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
  if config.get("peft_type") not in ("LORA", "IA3", "VERA"):
    raise UserError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA (LoRA, rsLoRA, "
                    "DoRA), IA3 and VERA adapters can be imported")
  if config.get("bias", "none") != "none":
    raise UserError(f"{path}: bias={config['bias']!r}; only bias='none' can be imported "
                    "(the project's adapters train no biases)")
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


def _parse_keys(tensors: dict[str, np.ndarray], saved: set[str], where: str,
                suffixes: Mapping[str, str]
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
  """({module: {part: array}} for the adapter tensors (`suffixes`: key suffix → part),
  {module.weight|bias: array of modules_to_save})."""
  lora: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
  whole: dict[str, np.ndarray] = {}
  for key, value in tensors.items():
    if not key.startswith(KEY_PREFIX):
      raise UserError(f"{where}: tensor {key} does not start with {KEY_PREFIX!r}; not a PEFT "
                      "LoRA adapter of a transformers model")
    name = key[len(KEY_PREFIX):]
    for suffix, part in suffixes.items():
      if name.endswith(suffix):
        lora[name[:-len(suffix)]][part] = np.asarray(value, np.float32)
        break
    else:
      module = name.rsplit(".", 1)[0]
      if module.rsplit(".", 1)[-1] in saved or module in saved:
        whole[name] = np.asarray(value, np.float32)
      else:
        kinds = ", ".join(sorted({k.split(".")[1] for k in suffixes}))
        raise UserError(f"{where}: tensor {key} is neither an adapter tensor ({kinds}) nor "
                        "part of modules_to_save; not supported")
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


@dataclasses.dataclass(frozen=True)
class Placed:
  """One imported (IA)³ or VeRA weight: its path and the rule spec that describes it."""

  path: str
  rule_spec: str

  def spec(self) -> str:
    return self.rule_spec


def _dense_kernels(out: PyTree, paths: Sequence[str]) -> list[np.ndarray]:
  kernels = []
  for path in paths:
    w0 = subtree(out, f"{path}/kernel")
    if isinstance(w0, Mapping):
      raise UserError(f"parameter {path}/kernel is already reparameterized; import a PEFT "
                      "adapter into the base model's dense params")
    kernels.append(w0)
  return kernels


def _module_paths(table: Modules, name: str, key: str, where: str) -> list[str]:
  """The project paths of HF module `name` (several for a fused one); a UserError naming
  the tensor `key` if the model has no such linear module."""
  paths = table.our_paths(name)
  if paths is None:
    raise UserError(f"{where}: tensor {key} adapts module {name}, which is not a linear "
                    f"module of this model (e.g. {next(iter(table.ours.values()))})")
  return paths


def _place_ia3(vectors: Mapping[str, Mapping[str, np.ndarray]], table: Modules, out: PyTree,
               where: str) -> list[Placed]:
  """Puts each module's (IA)³ θ = {base: W₀, ia3_l} into `out` (changed in place).  PEFT's
  ia3_l is [d_out, 1] (output scaling) or [1, d_in] (feedforward_modules: input).
  PEFT scales an output's bias too, (x W₀ + b) ⊙ l, so the imported bias is l ⊙ b
  (transforms/ia3.py).  A fused module (c_attn) gives its output blocks their slices
  of l (a block whose l is all ones keeps W₀), or each block the shared input l."""
  placed = []
  for name, parts in vectors.items():
    key = f"{KEY_PREFIX}{name}.ia3_l"
    paths = _module_paths(table, name, key, where)
    kernels = _dense_kernels(out, paths)
    d_in, d_out = kernels[0].shape[0], sum(w.shape[1] for w in kernels)
    l = parts["ia3_l"]
    if l.shape == (d_out, 1):
      offsets = np.cumsum([0, *(w.shape[1] for w in kernels)])
      for j, path in enumerate(paths):
        block = np.ascontiguousarray(l[offsets[j]:offsets[j + 1], 0])
        if len(paths) > 1 and np.all(block == 1):
          continue
        set_path(out, f"{path}/kernel", {"base": np.asarray(kernels[j]), "ia3_l": block})
        bias = subtree(out, f"{path}/bias")
        if bias is not None:
          set_path(out, f"{path}/bias", np.asarray(bias) * block)
        placed.append(Placed(path, "ia3"))
    elif l.shape == (1, d_in):
      for j, path in enumerate(paths):
        set_path(out, f"{path}/kernel", {"base": np.asarray(kernels[j]),
                                         "ia3_l": np.ascontiguousarray(l[0])})
        placed.append(Placed(path, "ia3(side=input)"))
    else:
      raise UserError(f"{where}: {key} has shape {l.shape}; module {name} ([{d_in}, {d_out}]) "
                      f"needs ({d_out}, 1) (output) or (1, {d_in}) (feedforward input)")
  return placed


def _place_vera(config: Mapping[str, Any], tensors: dict[str, np.ndarray], saved: set[str],
                table: Modules, out: PyTree, where: str
                ) -> tuple[list[Placed], dict[str, np.ndarray]]:
  """Puts each module's VeRA θ = {base: W₀, vera_d, vera_b} into `out` (changed in place);
  returns them and the modules_to_save tensors.  Our projections are regenerated from a
  seed, so only a saved pair this project generates imports: the one
  `export_peft_adapter` writes (its seed is projection_prng_key, its fan-in read off
  vera_A's scale).  PEFT's own pair is a torch draw: a UserError."""
  from reparam_jax.reparam.transforms.vera import projections
  tensors = dict(tensors)
  pair = [tensors.pop(f"{VERA_PAIR_PREFIX}vera_{x}", None) for x in "AB"]
  if pair[0] is None or pair[1] is None:
    raise UserError(f"{where} has no {VERA_PAIR_PREFIX}vera_A / vera_B (save_projection=false): "
                    "the projection would be PEFT's torch draw, which this project cannot "
                    "regenerate")
  vera_a, vera_b = (np.asarray(x, np.float32) for x in pair)
  rank, seed = vera_a.shape[0], int(config.get("projection_prng_key", 0))
  unit_a, proj_b = projections(seed, rank, vera_a.shape[1], vera_b.shape[0], 6)  # bound 1
  big = np.unravel_index(np.argmax(np.abs(unit_a)), unit_a.shape)
  fan_in = max(1, round(6 * (float(unit_a[big]) / float(vera_a.T[big])) ** 2)) if vera_a.T[
      big] else 0
  mine = projections(seed, rank, vera_a.shape[1], vera_b.shape[0], fan_in)[0] if fan_in else None
  if mine is None or not (np.array_equal(np.asarray(mine).T, vera_a)
                          and np.array_equal(np.asarray(proj_b).T, vera_b)):
    raise UserError(f"{where}: vera_A / vera_B are not a projection pair this project "
                    "generates (PEFT draws its own with torch's generator); only VeRA adapters "
                    "exported by reparam_jax import")
  vectors, whole = _parse_keys(tensors, saved, where, {".vera_lambda_d": "d",
                                                       ".vera_lambda_b": "b"})
  spec = (f"vera(rank={rank}, d_initial={float(config.get('d_initial', 0.1))!r}, seed={seed}, "
          f"fan_in={fan_in})")
  placed = []
  for name, parts in vectors.items():
    key = f"{KEY_PREFIX}{name}.vera_lambda_b"
    paths = _module_paths(table, name, key, where)
    if len(paths) > 1:
      raise UserError(f"{where}: VeRA on the fused {name} slices one projection over its "
                      "q|k|v outputs, which per-projection vera rules do not reproduce")
    (w0,) = _dense_kernels(out, paths)
    d, b = parts.get("d"), parts.get("b")
    if d is None or b is None or d.shape != (rank,) or b.shape != (w0.shape[1],):
      raise UserError(f"{where}: module {name} needs vera_lambda_d ({rank},) and vera_lambda_b "
                      f"({w0.shape[1]},)")
    set_path(out, f"{paths[0]}/kernel", {"base": np.asarray(w0), "vera_d": d, "vera_b": b})
    placed.append(Placed(paths[0], spec))
  return placed, whole


def _place_lora(config: Mapping[str, Any], lora: Mapping[str, Mapping[str, np.ndarray]],
                table: Modules, out: PyTree, where: str) -> list[Adapter]:
  """Puts each LoRA / DoRA module's θ into `out` (dense params, changed in place); a fused
  module's is split over its project modules (`_split_fused`).  Returns the adapters."""
  dora, rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
  r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
  adapters = []
  for name, parts in lora.items():
    key = f"{KEY_PREFIX}{name}"
    paths = _module_paths(table, name, f"{key}.lora_A.weight", where)
    for part in ("lora_A", "lora_B") + (("magnitude",) if dora else ()):
      if part not in parts:
        what = MAGNITUDE_KEY if part == "magnitude" else f"{part}.weight"
        raise UserError(f"{where}: {key}.{what} is missing (use_dora={dora})")
    if "magnitude" in parts and not dora:
      raise UserError(f"{where}: {key}.{MAGNITUDE_KEY} present but use_dora is false")
    w0s = _dense_kernels(out, paths)
    d_in, d_out = w0s[0].shape[0], sum(w.shape[1] for w in w0s)
    shown = (f"parameter {paths[0]}/kernel {tuple(w0s[0].shape)}" if len(paths) == 1 else
             f"parameters {', '.join(paths)} (fused, [{d_in}, {d_out}] together)")
    a, b = parts["lora_A"], parts["lora_B"]
    rank = a.shape[0]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != d_in or b.shape != (d_out, rank):
      raise UserError(f"{where}: {key}.lora_A.weight {a.shape} / lora_B.weight {b.shape} do not "
                      f"fit {shown} (expected [r, {d_in}] and [{d_out}, r])")
    want = int(_pattern_value(config.get("rank_pattern"), name, r))
    if rank != want:
      raise UserError(f"{where}: {key}.lora_A.weight has rank {rank} but adapter_config.json "
                      f"says r={want} for module {name} (r / rank_pattern)")
    m = parts.get("magnitude")
    if m is not None and m.shape != (d_out,):
      raise UserError(f"{where}: {key}.{MAGNITUDE_KEY} has shape {m.shape}, {shown} needs "
                      f"({d_out},)")
    adapter = Adapter(paths[0], rank, float(_pattern_value(config.get("alpha_pattern"), name,
                                                           alpha)),
                      rslora, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), m,
                      float(config.get("lora_dropout") or 0.0))
    split = [adapter] if len(paths) == 1 else _split_fused(adapter, paths,
                                                           [w.shape[1] for w in w0s])
    for one in split:
      theta: dict[str, Any] = {"base": np.asarray(w0s[paths.index(one.path)]),
                               "lora_a": one.lora_a, "lora_b": one.lora_b}
      if one.magnitude is not None:
        theta = {"base": theta, MAGNITUDE_THETA: one.magnitude}
      set_path(out, f"{one.path}/kernel", theta)
      adapters.append(one)
  return adapters


def import_peft_adapter(folder: str, params: PyTree, model_params: PyTree | None = None
                        ) -> tuple[PyTree, tuple[tuple[str, str], ...]]:
  """(θ params, config.reparam.rules) of dense `params` (a BERT, GPT-2, Llama-family or T5
  model) with the PEFT adapter in `folder`.

  `params` are the base model's dense params (e.g. `hf.importer.import_folder`
  of the folder named by the adapter's base_model_name_or_path).  Each adapted
  kernel becomes θ = {base: W₀, lora_a, lora_b} (DoRA: {base: that, magnitude});
  GPT-2's fused c_attn is split over query/key/value (`_split_fused`).  An IA3
  adapter gives θ = {base: W₀, ia3_l} (`_place_ia3`), a VeRA one exported by this
  project θ = {base: W₀, vera_d, vera_b} (`_place_vera`).  modules_to_save
  replace the dense weights they name.  The rules (`lora(rank=.., alpha=..[,
  rslora=True])[|magnitude]`, `ia3[(side=input)]`, `vera(...)`; one per distinct
  spec) make `Reparam.from_config({'rules': rules})` compute with them, e.g.
  `--config.reparam.rules=...` to keep training.

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
  out = _copy_dicts(tree)
  kind = config.get("peft_type")
  if kind == "LORA":
    lora, whole = _parse_keys(tensors, saved, where, _SUFFIXES)
    if not lora:
      raise UserError(f"{where} holds no lora_A / lora_B tensors")
    adapters: list[Any] = _place_lora(config, lora, table, out, where)
  elif kind == "IA3":
    vectors, whole = _parse_keys(tensors, saved, where, {".ia3_l": "ia3_l"})
    adapters = _place_ia3(vectors, table, out, where)
  else:
    adapters, whole = _place_vera(config, tensors, saved, table, out, where)
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


def _split_fused(fused: Adapter, paths: Sequence[str], widths: Sequence[int]) -> list[Adapter]:
  """The adapters of the project modules whose output column blocks make up a fused
  module (GPT-2's c_attn = query|key|value), exactly: ΔW's columns split, so each block
  keeps A, the scale and its columns of B (and of DoRA's per-column magnitude).

  An adapter in block form (the blocks' non-zero B rows are disjoint, as
  `export_peft_adapter` writes separate q/k/v adapters) gives each block only
  its own rank components, alpha rescaled to keep the scale; a block with none
  then has no adapter (plain LoRA: it is W₀) or, under DoRA, keeps all R."""
  ranks = range(fused.rank)
  offsets = np.cumsum([0, *widths])
  b_blocks = [fused.lora_b[:, offsets[j]:offsets[j + 1]] for j in range(len(paths))]
  used = [set(np.flatnonzero(np.any(b != 0, axis=1)).tolist()) for b in b_blocks]
  block_form = any(used) and all(not (used[i] & used[j]) for i in range(len(used))
                                 for j in range(i))
  out = []
  for j, path in enumerate(paths):
    keep = sorted(used[j]) if block_form and (used[j] or fused.magnitude is None) else list(ranks)
    if not keep:
      continue  # a zero block of plain LoRA: the module is W₀
    rank = len(keep)
    alpha = fused.alpha if rank == fused.rank else (
        fused.alpha * math.sqrt(rank) / math.sqrt(fused.rank) if fused.rslora
        else fused.alpha * rank / fused.rank)
    m = None if fused.magnitude is None else fused.magnitude[offsets[j]:offsets[j + 1]]
    out.append(Adapter(path, rank, alpha, fused.rslora,
                       np.ascontiguousarray(fused.lora_a[:, keep]),
                       np.ascontiguousarray(b_blocks[j][keep]), m, fused.dropout))
  return out


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
  if la.name == "vera":  # d_initial only sets d's value at init, which θ replaces
    return dataclasses.replace(la, d_initial=lb.d_initial) == lb
  if la.name != "lora":
    return la == lb
  return (la.rank, float(la.alpha), la.rslora, lb.keeps_base) == (
      lb.rank, float(lb.alpha), lb.rslora, True)
