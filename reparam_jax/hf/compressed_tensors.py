"""The `compressed-tensors` format (what llm-compressor writes and vLLM serves): export of a
run's `packed` kernels as `pack-quantized` weights, and import of such folders.

On disk (compressed-tensors 0.20, read off its `PackedQuantizationCompressor`), for each
quantized `Linear` (torch layout `[out, in]`) the `.weight` tensor is replaced by

  weight_packed      int32 [out, ⌈in·bits/32⌉]   the codes as one little-endian bit stream
                                                 along `in` (element i at bits [i·bits,
                                                 (i+1)·bits)), the last word zero-padded
  weight_scale       float [out, n_groups]       group g: `in` columns [g·G, (g+1)·G)
  weight_zero_point  int32 [⌈out·bits/32⌉, n_groups]  asymmetric only, the same bit stream
                                                 along `out`
  weight_shape       int64 [2]                   (out, in)

Its integers are signed, q ∈ [−2^(bits−1), 2^(bits−1) − 1], stored offset by 2^(bits−1),
and w = (q − zp)·scale (zp = 0 when symmetric).  With the offset, the stored numbers are
exactly `packed`'s codes and zeros (q = codes − 2^(bits−1), zp = zeros − 2^(bits−1), so
q − zp = codes − zeros, and a symmetric `packed` has zeros = 2^(bits−1)): no conversion, and
`packed`'s bytes along d_in are already that bit stream (packed.py), so `weight_packed` is
θ's codes transposed and viewed as int32.  The dequantized weights are the same float32
numbers on both sides.

config.json gets `quantization_config` (quant_method "compressed-tensors", format
"pack-quantized", one config group per (bits, group, sym) naming its modules in `targets`;
strategy "group" with `group_size`, or "channel" for `packed(group=0)`), and `ignore`
lists the linear layers exported dense (not `packed`, and the LM head).

Families: the Llama family (LlamaForCausalLM and its relatives: `nn.Linear` projections).
GPT-2's projections are `Conv1D` modules, which compressed-tensors does not compress.
`sparse24` kernels are refused: compressed-tensors 0.20 has no sparse compressor (its
`sparsity_config` is always empty; `sparse-24-bitmask` was removed).

Import (`decompress`, a hook of importer.import_tensors: convert_hf, sample, init_from) gives
the dense dequantized weights, because an imported checkpoint is plain params with no
reparam rules; `packed_params(folder)` gives the `packed` θ of each quantized kernel for
code that keeps them small.  `init_from` keeps them small too: the trainer imports with
`keep_packed` (`split_packed`: a Llama-family folder's quantized projections come as
`PackedWeight`s, the folder's bytes, not dequantized) and `adopt_packed` then gives each
one to the run's rules: the θ of a rule whose base stage is `packed` with the folder's
(bits, group, sym), the same bytes (an adapter on top starts as `Reparam.adopt_dense`
starts it); dense weights where no rule stores the kernel packed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np
import safetensors.numpy

from reparam_jax.errors import UserError
from reparam_jax.hf import exporter, exporting_family, llama
from reparam_jax.hf.files import read_config, read_weights, weights_file
from reparam_jax.pytree import layers
from reparam_jax.pytree.paths import dict_leaves, unflatten
from reparam_jax.reparam.base import fold_key
from reparam_jax.reparam.compose import Wrapped
from reparam_jax.reparam.rules import Plan, map_theta, path_key
from reparam_jax.reparam.transforms import packed as packed_lib
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.rundir import workdir as rundir

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
VERSION = "0.20.0"  # the compressed-tensors release whose layout this writes (the peer tests')
_PROJECTIONS = {ours: hf for hf, ours in llama._PROJECTIONS}  # attn/query → self_attn.q_proj
_KERNEL = re.compile(r"block_(\d+)/(.+)/kernel")


# --- bit streams -------------------------------------------------------------------------------

def words_from_codes(codes_RxC: np.ndarray, bits: int) -> np.ndarray:
  """uint8 codes < 2^bits [R, C] → compressed-tensors' int32 words [R, ⌈C·bits/32⌉], each
  row one little-endian bit stream (code i at bits [i·bits, (i+1)·bits))."""
  rows, cols = codes_RxC.shape
  bits_RxCxB = (np.asarray(codes_RxC, np.uint8)[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
  stream = bits_RxCxB.reshape(rows, cols * bits)
  stream = np.pad(stream, ((0, 0), (0, -stream.shape[1] % 32)))  # the last word's zero bits
  return np.packbits(stream, axis=1, bitorder="little").view("<i4").astype(np.int32)


def codes_from_words(words_RxW: np.ndarray, bits: int, cols: int) -> np.ndarray:
  """Inverse of `words_from_codes`: int32 [R, W] → uint8 codes [R, cols]."""
  stream = np.ascontiguousarray(np.asarray(words_RxW).astype("<i4")).view(np.uint8)
  bits_RxN = np.unpackbits(stream, axis=1, bitorder="little")[:, :cols * bits]
  weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
  return (bits_RxN.reshape(-1, cols, bits) * weights).sum(axis=2).astype(np.uint8)


def dequantize(node: packed_lib.Packed, theta: dict[str, np.ndarray]) -> np.ndarray:
  """W = (codes − zeros)·scales [d_in, d_out] in float32: the numbers `packed` computes
  with (the integer difference is exact, one rounding in the product), and those
  compressed-tensors' `dequantize` gives."""
  d_in, d_out = node.dense_shape(theta)
  bytes_OxP = np.ascontiguousarray(np.asarray(theta["codes"]).T)
  stream = np.pad(bytes_OxP, ((0, 0), (0, -bytes_OxP.shape[1] % 4))).view("<i4")
  codes = codes_from_words(stream, node.bits, d_in).T.astype(np.float32)
  scales = np.asarray(theta["scales"], np.float32)
  zeros = (np.asarray(theta["zeros"], np.float32) if "zeros" in theta
           else np.full(scales.shape, 2.0 ** (node.bits - 1), np.float32))
  n_groups = scales.shape[0]
  c = codes.reshape(n_groups, d_in // n_groups, d_out)
  return ((c - zeros[:, None]) * scales[:, None]).reshape(d_in, d_out)


# --- export ------------------------------------------------------------------------------------

def _scheme(node: packed_lib.Packed) -> dict[str, Any]:
  return {"num_bits": node.bits, "type": "int", "symmetric": node.sym, "dynamic": False,
          "strategy": "group" if node.group else "channel",
          "group_size": node.group or None}


def compress_theta(node: packed_lib.Packed, theta: dict[str, Any]) -> dict[str, np.ndarray]:
  """`packed` θ of a `[d_in, d_out]` kernel → the module's compressed-tensors tensors."""
  codes = np.asarray(theta["codes"])
  d_in, d_out = node.dense_shape(theta)
  stream = np.ascontiguousarray(codes.T)  # [d_out, d_in·bits/8]: a bit stream along d_in
  stream = np.pad(stream, ((0, 0), (0, -stream.shape[1] % 4)))  # the last word's zero bits
  out = {"weight_packed": stream.view("<i4").astype(np.int32),
         "weight_scale": np.asarray(theta["scales"], np.float32).T.copy(),
         "weight_shape": np.array([d_out, d_in], np.int64)}
  if not node.sym:
    out["weight_zero_point"] = words_from_codes(np.asarray(theta["zeros"]), node.bits).T.copy()
  return out


def packed_kernels(workdir: str) -> dict[str, tuple[packed_lib.Packed, dict[str, Any]]]:
  """`{block_i/…/kernel: (packed transform, θ on this host)}` of a training workdir or
  compress output whose rules store kernels `packed`; UserError for a model or a rule that
  compressed-tensors cannot hold."""
  run_json = rundir.path(workdir, rundir.CONFIG)
  if not os.path.exists(run_json):
    raise UserError(f"--workdir={workdir}: --format=compressed-tensors needs a training workdir "
                    "or compress output (config.json) whose reparam rules store kernels packed")
  with open(run_json, encoding="utf-8") as f:
    run_config = json.load(f)
  plan = Plan.from_config(run_config.get("reparam") or {})
  params = layers.unstack_layers(checkpoint.load_params(workdir))
  # The family first, before anything is written (the exporter decides it the same way).
  cfg = exporter._run_model(run_config, dict(dict_leaves(params)))
  if exporting_family(cfg, False) is not llama:
    raise UserError(f"--format=compressed-tensors: the model of {workdir} does not export as "
                    "the Llama family, whose nn.Linear projections compressed-tensors compresses "
                    "(GPT-2's are Conv1D); export it with --format=dense")
  found: dict[str, tuple[packed_lib.Packed, dict[str, Any]]] = {}

  def visit(path: str, rule: Any, theta: Any) -> Any:
    if rule is None:
      return theta
    if isinstance(rule.node, packed_lib.Packed):
      found[path] = (rule.node, {k: sharded.host_copy(v) for k, v in theta.items()})
    elif re.search(r"\b(packed|sparse24)\b", rule.spec):
      if "sparse24" in rule.spec:
        raise UserError(f"{path}: {rule.spec!r} is 2:4 sparsity, which compressed-tensors 0.20 "
                        "cannot store (it has no sparse compressor); export with --format=dense")
      raise UserError(f"{path}: {rule.spec!r} is a packed kernel under another transform; "
                      "quantize the merged weights again (compress: rtn or gptq) or export "
                      "with --format=dense")
    return theta

  map_theta(plan, params, visit)
  if not found:
    raise UserError(f"--workdir={workdir} has no packed kernels (reparam rule 'packed(...)'); "
                    "export it with --format=dense")
  return found


def quantization_config(schemes: dict[str, dict[str, Any]], ignore: list[str]
                        ) -> dict[str, Any]:
  """config.json's `quantization_config`: module name → weight scheme, grouped."""
  groups: dict[str, dict[str, Any]] = {}
  for module, scheme in schemes.items():
    key = json.dumps(scheme, sort_keys=True)
    groups.setdefault(key, {"targets": [], "weights": scheme, "input_activations": None,
                            "output_activations": None, "format": FORMAT})
    groups[key]["targets"].append(module)
  return {"quant_method": QUANT_METHOD, "format": FORMAT, "version": VERSION,
          "quantization_status": "compressed",
          "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
          "ignore": ignore, "sparsity_config": {}, "transform_config": {},
          "kv_cache_scheme": None, "global_compression_ratio": None}


def export(workdir: str, out_dir: str) -> dict[str, Any]:
  """Writes `out_dir` as `exporter.export` does, the `packed` kernels in pack-quantized form."""
  kernels = packed_kernels(workdir)
  out = exporter.export(workdir, out_dir, max_shard_bytes=2**62)  # one file, rewritten below
  hf_path = os.path.join(out_dir, "config.json")
  with open(hf_path, encoding="utf-8") as f:
    hf = json.load(f)
  weights = os.path.join(out_dir, exporter.WEIGHTS_FILE)
  tensors = dict(safetensors.numpy.load_file(weights))
  schemes: dict[str, dict[str, Any]] = {}
  for path, (node, theta) in kernels.items():
    m = _KERNEL.fullmatch(path)
    if not m or m.group(2) not in _PROJECTIONS:
      raise UserError(f"{path}: a packed kernel outside the Llama projections has no "
                      "compressed-tensors place; exclude it from the packed rule's regex")
    module = f"{llama.BACKBONE_PREFIX}layers.{m.group(1)}.{_PROJECTIONS[m.group(2)]}"
    del tensors[f"{module}.weight"]
    tensors.update({f"{module}.{k}": v for k, v in compress_theta(node, theta).items()})
    schemes[module] = _scheme(node)
  dense = sorted({n[:-len(".weight")] for n in tensors
                  if re.search(r"(_proj|lm_head)\.weight$", n)})
  safetensors.numpy.save_file(tensors, weights, metadata={"format": "pt"})
  hf["quantization_config"] = quantization_config(schemes, dense or ["lm_head"])
  with open(hf_path, "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2)
  out.update(quantized=len(schemes), files=1,
             values=sum(int(np.prod(v.shape)) for v in tensors.values()), tensors=len(tensors))
  return out


# --- import ------------------------------------------------------------------------------------

def is_compressed(hf: dict[str, Any]) -> bool:
  return (hf.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD


def _weight_args(qcfg: dict[str, Any], module: str, where: str) -> dict[str, Any]:
  """The `weights` arguments of the config group whose targets name `module` (an exact
  name, then a `re:` pattern, then a class name such as "Linear")."""
  groups = list((qcfg.get("config_groups") or {}).values())
  for test in (lambda t: t == module,
               lambda t: t.startswith("re:") and re.match(t[3:], module),
               lambda t: not t.startswith("re:") and "." not in t and t[:1].isupper()):
    for g in groups:
      if any(test(t) for t in g.get("targets") or ()):
        fmt = g.get("format") or qcfg.get("format")
        if fmt != FORMAT:
          raise UserError(f"{where}: {module} is in compressed-tensors format {fmt!r}; only "
                          f"{FORMAT!r} is read (export such a model dense with its own tools)")
        w = g.get("weights") or {}
        if w.get("type", "int") != "int" or w.get("strategy") not in ("group", "channel"):
          raise UserError(f"{where}: {module}: weights {w.get('type')} / strategy "
                          f"{w.get('strategy')!r}; only int weights with strategy group or "
                          "channel are read")
        return w
  raise UserError(f"{where}: {module} has packed weights but no config group of "
                  "quantization_config targets it")


def theta_of(module_tensors: dict[str, np.ndarray], args: dict[str, Any]
             ) -> tuple[packed_lib.Packed, dict[str, np.ndarray]]:
  """One module's compressed-tensors tensors → (`packed` transform, θ of its [in, out] kernel)."""
  bits = int(args["num_bits"])
  d_out, d_in = (int(x) for x in module_tensors["weight_shape"])
  scales = np.asarray(module_tensors["weight_scale"]).reshape(d_out, -1)
  group = 0 if args.get("strategy") == "channel" else int(args["group_size"])
  node = packed_lib.Packed(bits=bits, group=group, sym=bool(args.get("symmetric", True)))
  node.check((d_in, d_out))
  stream = np.ascontiguousarray(np.asarray(module_tensors["weight_packed"]).astype("<i4"))
  codes = stream.view(np.uint8)[:, :d_in * bits // 8].T  # packed.py's bytes: the same stream
  theta = {"codes": np.ascontiguousarray(codes), "scales": scales.T.copy()}
  if not node.sym:
    zp = np.asarray(module_tensors["weight_zero_point"])
    theta["zeros"] = codes_from_words(zp.T, bits, d_out)
  return node, theta


def _modules(tensors: dict[str, np.ndarray]) -> list[str]:
  return [n[:-len(".weight_packed")] for n in tensors if n.endswith(".weight_packed")]


def decompress(tensors: dict[str, np.ndarray], hf: dict[str, Any], where: str
               ) -> dict[str, np.ndarray]:
  """The state dict with each pack-quantized module's `weight` dequantized (float32,
  `(codes − zeros)·scales`, what compressed-tensors computes)."""
  qcfg = hf["quantization_config"]
  out = dict(tensors)
  for module in _modules(tensors):
    parts = {k: out.pop(f"{module}.{k}") for k in ("weight_packed", "weight_scale",
                                                   "weight_shape", "weight_zero_point")
             if f"{module}.{k}" in out}
    node, theta = theta_of(parts, _weight_args(qcfg, module, where))
    out[f"{module}.weight"] = dequantize(node, theta).T
  if any(k.endswith((".weight_scale", ".input_scale")) for k in out):
    kind = next(k for k in out if k.endswith((".weight_scale", ".input_scale")))
    raise UserError(f"{where}: {kind} belongs to a compressed-tensors format other than "
                    f"{FORMAT!r} (dense quantized weights); it is not read")
  return out


def packed_params(folder: str) -> dict[str, tuple[packed_lib.Packed, dict[str, np.ndarray]]]:
  """`{block_i/…/kernel: (packed transform, θ)}` of a Llama-family compressed-tensors folder:
  its quantized kernels as `packed` stores them (no dense copy)."""
  hf = read_config(folder)
  where = os.path.join(folder, "config.json")
  if not is_compressed(hf) or hf.get("model_type") not in llama.MODEL_TYPES:
    raise UserError(f"{where}: not a Llama-family compressed-tensors model")
  tensors = read_weights(weights_file(folder))
  ours = {hf_name: path for path, hf_name in _PROJECTIONS.items()}
  out = {}
  for module in _modules(tensors):
    m = re.fullmatch(re.escape(llama.BACKBONE_PREFIX) + r"layers\.(\d+)\.(.+)", module)
    if not m or m.group(2) not in ours:
      raise UserError(f"{where}: quantized module {module} is not a Llama projection")
    parts = {k[len(module) + 1:]: v for k, v in tensors.items() if k.startswith(module + ".")}
    out[f"block_{m.group(1)}/{ours[m.group(2)]}/kernel"] = theta_of(
        parts, _weight_args(hf["quantization_config"], module, where))
  return out


# --- starting a run packed (init_from) ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PackedWeight:
  """A quantized kernel of a compressed-tensors folder as the folder stores it, where an
  import with `keep_packed` puts its `[d_in, d_out]` weight: `adopt_packed` turns it into
  the θ of a rule that stores it `packed`, or dequantizes it (`dense`)."""

  module: str  # the Hugging Face module, for errors
  node: packed_lib.Packed  # the folder's (bits, group, sym)
  theta: dict[str, np.ndarray]

  @property
  def shape(self) -> tuple[int, int]:
    return self.node.dense_shape(self.theta)

  dtype = np.dtype(np.float32)  # what dequantizing gives: an import's dtype

  def dense(self) -> np.ndarray:
    return dequantize(self.node, self.theta)


def split_packed(tensors: dict[str, np.ndarray], hf: dict[str, Any], where: str
                 ) -> tuple[dict[str, np.ndarray], dict[str, PackedWeight]]:
  """(the state dict with each quantized Llama projection's `weight` a placeholder of its
  shape that holds no memory, `{block_i/…/kernel: PackedWeight}`), for an import that puts
  the `PackedWeight`s in place of the placeholders; another family's folder, unchanged."""
  if hf.get("model_type") not in llama.MODEL_TYPES:
    return tensors, {}
  ours = {hf_name: path for path, hf_name in _PROJECTIONS.items()}
  out, kept = dict(tensors), {}
  for module in _modules(tensors):
    m = re.fullmatch(re.escape(llama.BACKBONE_PREFIX) + r"layers\.(\d+)\.(.+)", module)
    if not m or m.group(2) not in ours:
      continue  # decompress dequantizes it, or names it in its error
    parts = {k: out.pop(f"{module}.{k}") for k in ("weight_packed", "weight_scale",
                                                   "weight_shape", "weight_zero_point")
             if f"{module}.{k}" in out}
    node, theta = theta_of(parts, _weight_args(hf["quantization_config"], module, where))
    d_in, d_out = node.dense_shape(theta)
    # Zero strides: the family's mapping table transposes and checks it like any weight.
    out[f"{module}.weight"] = np.broadcast_to(np.zeros((), np.float32), (d_out, d_in))
    kept[f"block_{m.group(1)}/{ours[m.group(2)]}/kernel"] = PackedWeight(module, node, theta)
  return out, kept


def _packed_base(node: Any) -> packed_lib.Packed | None:
  """The `packed` stage a rule's node stores W in (alone, or under wrappers: `packed|lora`)."""
  while isinstance(node, Wrapped):
    node = node.inner
  return node if isinstance(node, packed_lib.Packed) else None


def _same_grid(a: packed_lib.Packed, b: packed_lib.Packed, d_in: int) -> bool:
  return (a.bits, a.group or d_in, a.sym) == (b.bits, b.group or d_in, b.sym)


def _theta_over(node: Any, base: dict[str, np.ndarray], shape: tuple[int, int], key: Any,
                where: str) -> dict[str, Any]:
  """θ of `node` whose `packed` stage holds `base`: each wrapper's own entries as
  `Wrapped.from_dense` would draw them under the same key (LoRA's A, B = 0)."""
  if not isinstance(node, Wrapped):
    return base
  if not getattr(node.outer, "keeps_base", True):
    raise UserError(f"{where}: {node.outer.describe()} rewrites the weight it wraps (W − A·B), "
                    "but the folder's packed codes are kept as they are; use a random init "
                    "(lora's default, init=kaiming) or start from a dense folder")
  inner = _theta_over(node.inner, base, shape, fold_key(key, 0), where)
  # std: no wrapper draws from the weight's scale when it wraps an existing base.
  return {"base": inner, **node.outer.wrap_own(fold_key(key, 1), node.inner, inner, shape,
                                               np.float32, None)}


def adopt_packed(params: Any, plan: Plan, key: Any, where: str) -> Any:
  """`params` of an import with `keep_packed` (after `init_layers` picked its blocks) with
  each `PackedWeight` made the θ its rule stores: the folder's codes, scales and zeros
  where the rule's base stage is `packed` with the folder's bits, group and sym (`key`:
  `Reparam.adopt_dense`'s, so an adapter on top starts as from a dense folder), dense
  dequantized weights where no rule stores the kernel packed.  A rule that stores packed a
  kernel the folder quantizes otherwise, or keeps dense, is a UserError naming both."""
  flat = dict(dict_leaves(params))
  if not any(isinstance(v, PackedWeight) for v in flat.values()):
    return params  # not a compressed-tensors folder (or not one whose kernels stay packed)
  out = {}
  for path, leaf in flat.items():
    rule = plan.match(path)
    want = None if rule is None else _packed_base(rule.node)
    if want is None:
      out[path] = leaf.dense() if isinstance(leaf, PackedWeight) else leaf
      continue
    here = f"init_from={where}: {path}"
    if not isinstance(leaf, PackedWeight):
      raise UserError(f"{here} is dense in the folder (not in its quantization_config) but "
                      f"rule {rule.pattern!r} stores it {want.describe()}; exclude it from "
                      "the rule's regex")
    d_in, _ = leaf.shape
    if not _same_grid(leaf.node, want, d_in):
      raise UserError(f"{here} ({leaf.module}) is {leaf.node.describe()} in the folder but "
                      f"rule {rule.pattern!r} stores it {want.describe()}; give the rule the "
                      "folder's bits, group and sym")
    rule.node.check(leaf.shape)
    out[path] = _theta_over(rule.node, leaf.theta, leaf.shape, path_key(key, path), here)
  return unflatten(out)
