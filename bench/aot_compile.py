r"""Ahead-of-time compile of the real train step at pod scale: no accelerator, no parameters.

The trainer's own step (training/loop.py: `steps.create_train_state`'s shardings,
`optim.make_optimizer`, `steps.make_train_step` over the LM task's loss, jit with
the same in/out shardings and `donate_argnums=0`) for a decoder (GPT-2-style, or
a Llama preset) built from configs/lm/shakespeare_char.py plus size overrides
and a synthetic vocabulary (bench/lm_step.SyntheticLMTask), lowered and
compiled for a simulated CPU mesh
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, one child process per
run because the device count is fixed when JAX starts).  Nothing the size of
a parameter is ever allocated: `create_train_state` itself runs under
`jax.eval_shape` (its `jit(init)` is only traced), the state's ShapeDtypeStructs
get their NamedShardings (`steps.abstract_like`), and
`jit(...).lower(abstract_state, abstract_batch).compile()` is timed in two parts.
Each child reports its peak RSS after building the abstract state, after
lowering and after compiling (`child_peak_rss_by_phase`) as the evidence: it
stays at the interpreter's few hundred MB through state and lowering (a
gpt2-medium state, params + Adam moments, would be 4.3 GB); what grows after
that is the XLA compiler's own memory (about 4.4 GB for gpt2-medium unrolled).

  python -m bench.aot_compile memory --sizes gpt2-medium --devices 8 --fsdp 8 \
      --variants dense,lora --set model.remat=True
  python -m bench.aot_compile memory --sizes 7b --devices 64 --fsdp 16 --tensor 4
  python -m bench.aot_compile depth --layers 2,12,24,48 --width 128 --set model.scan_layers=True
  python -m bench.aot_compile memory --sizes llama3.1-8b --devices 8,64 \
      --variants dense,lora,qlora --batch_per_shard 2 --set model.scan_layers=True \
      --set model.remat=full
  python -m bench.aot_compile depth --shape llama --layers 2,32,80 --width 512 \
      --set model.scan_layers=True --set model.remat=full
  python -m bench.aot_compile --smoke            # tiny, 8 devices, dense + lora (< 1 min)
  python -m bench.aot_compile --smoke --devices 1,8   # the same at 1 and at 8 devices
  python -m bench.aot_compile --child '<json>'   # one run (what the parent starts)

Options: `--devices` takes a comma list (one child per count; `--fsdp` defaults
to devices / (tensor × data)); `--set key=value` (repeatable, dotted config keys,
values parsed as Python literals, else kept as strings) is applied last, after
the size, mesh, batch and variant overrides, so keys the trainer grows later
(`model.remat='dots'`, `model.scan_layers`, `reparam.per_layer`) pass through
unchanged; a key the config does not have is that run's error line, not a crash
of the sweep.  `--out FILE` appends the JSON lines to FILE as well.

Batch: `--batch_per_shard` sequences (default 8) per data-parallel shard, so the
global batch is batch_per_shard × data × fsdp (`--global_batch` sets it
directly); 8 × 1024 tokens per device is a common per-device batch for
GPT-2-class models at context 1024 (MaxText's `per_device_batch_size`).
Tokens are synthetic: the batch is `tokens [global_batch, seq + 1] int32`.

Sizes (SIZES below; vocabulary 50257 and context 1024 except `tiny`): gpt2-medium
24 × 1024 (16 heads, MLP 4096, 355M parameters), 1.3b 24 × 2048 (16 heads, MLP
8192, 1.31B), 7b 32 × 4096 (32 heads, MLP 16384, 6.65B); tied embeddings,
learned positions, biases (the project's GPT-2 block).  llama3.1-8b and
llama3.1-70b are the `llama3_1_8b` and `llama3_1_70b` presets of
reparam_jax/models/presets.py (`model.preset`, with the preset's dimensions and
vocabulary 128256 set as overrides, since configs/base.py's model keys override
a preset): RMSNorm, no biases, grouped-query attention (8 KV heads of width
128), SwiGLU MLP (fc_in, fc_gate, fc_out), RoPE, untied lm_head; 8.03B and
70.55B parameters; context 2048.  `tiny-llama` is the same block at 2 × 256.
Compute and parameter dtype are the config's (float32) unless `--set
model.dtype='bfloat16'`.

Variants (VARIANTS below: {label: config overrides}; `{quarter_width}` and other
`{field}`s of the size are filled in): dense; lora (rank 16 on every block
matrix: query, key, value, out, fc_in, fc_gate when the MLP is gated, fc_out;
everything else frozen); lowrank (rank = width / 4 on the same
matrices, trained from scratch); spherical (the same matrices); qlora (those
matrices stored as packed 4-bit NF4 with LoRA rank 16 on top, the rest frozen,
configs/sst2/minilm_qlora.py's spec).

Per run, one JSON line.  Every memory figure is PER DEVICE (XLA compiles one SPMD
program; `compiled.memory_analysis()` describes one device's buffers):
  arguments_bytes  `argument_size_in_bytes`: the inputs: this device's shard of the
                   train state (params, Adam moments, step, non-trainable
                   collections) and of the token batch.
  outputs_bytes    `output_size_in_bytes`: the new state's shard + the metrics.
  aliased_bytes    `alias_size_in_bytes`: output bytes that reuse donated argument
                   buffers (the state: donate_argnums=0).
  temp_bytes       `temp_size_in_bytes`: XLA's scratch for the step (activations
                   kept for the backward pass, gradients, all-gathered weights,
                   optimizer temporaries), as the buffer assignment packs them
                   (its peak live set, not the sum of all temporaries).
  code_bytes       `generated_code_size_in_bytes` (0 on CPU: code is not on device).
  peak_memory_bytes `peak_memory_in_bytes` as the backend reports it; on CPU (jax 0.12)
                   it equals about the arguments, temporaries not included, so it
                   is recorded but not used.
  total_bytes      arguments + temporaries + outputs − aliased: what the step needs
                   resident at once on one device, by XLA's own buffer assignment.
  ideal_bytes      the model below; ratio = total_bytes / ideal_bytes.
  lower_s          trace + lower to StableHLO (`jit(...).lower`), wall seconds.
  compile_s        XLA compile for the CPU backend (`lowered.compile()`), wall
                   seconds; on TPU/GPU compile times differ (other passes), but
                   their growth with depth and with `scan_layers` is the point.
  params           parameters of the dense architecture (the size's count);
                   stored_params / stored_param_bytes / trainable_params: what
                   this variant's state holds (LoRA adds A and B, q4 stores
                   packed codes, lowrank stores U and V instead of W).
  child_peak_rss_bytes, child_peak_rss_by_phase  the compiling process's peak host
                   RSS (VmHWM) at the end, and after state / lower / compile /
                   memory_analysis (which builds a serialized buffer-assignment proto).
  state_build_s    `jax.eval_shape` of create_train_state (abstract: no FLOPs).
  ideal_state_bytes, ideal_activation_bytes, ideal_logits_bytes,
  ideal_gathered_bytes, ideal_remat_model
                   the ideal's four terms and which remat formula was used.
  scan_layers, reparam_per_layer  the config's values (null where the key does
                   not exist in this checkout); remat, dtype likewise.

The ideal (a model of what a perfect FSDP/ZeRO-3 step must hold at its peak,
not a proven bound;
B = per-device sequences = global_batch / (data × fsdp), T = seq, D = width,
M = MLP width, H = heads, G = key/value heads (H without grouped-query
attention), K = head width (D / H unless the config sets it), V = vocabulary,
L = layers, t = tensor, c = bytes of the compute dtype, P = devices; every
figure is read from the model's TransformerConfig; the GPT-2 block is the
case G = H, K = D / H, ungated MLP):
  state  = (stored_param_bytes + 3 × trainable_param_bytes) / P, counted
           from the variant's parameter tree (so an untied lm_head, RMSNorm's
           scale without bias, LoRA's factors and q4's codes are what they are):
           each stored parameter once, and for each trainable one its
           gradient and two Adam moments, in the parameter dtype; for dense
           float32 this is params × (4 param + 4 grad + 8 Adam) / P.  Spread
           over ALL devices (also `data` and `tensor`, which in this codebase
           replicate what `embed → fsdp` and `heads/mlp → tensor` do not split).
           Gradients are in it although XLA holds them as temporaries (they
           are not arguments: arguments ≈ 12 bytes per dense parameter / P).
  acts   = activations the backward pass needs, by `model.remat`:
    full (True/'full'):  L × B·T·D·c            (each block's input, saved)
                        + one layer's working set (rematerialised in the backward)
    none (False/'none'): L × one layer's working set
    dots_no_batch:       L × B·T·c·(D + (H + 2G)·K/t + D + g·M/t + D)   (block input
                         and the outputs of the matmuls without batch dimensions:
                         q, k, v, attention out-projection, fc_in (and fc_gate:
                         g = 2 for a gated MLP, else 1), fc_out)
                        + one layer's working set
    dots:                dots_no_batch + L × (B·(H/t)·T²·c + B·T·c·H·K/t)   (the
                         batched attention matmuls' outputs are kept too)
    one layer's working set = B·T·c·(6D + (2H + 2G)·K/t + m·M/t) + 2·B·(H/t)·T²·c:
      residual-width tensors (block input, two norm outputs, the attention and
      MLP outputs, the mid-block residual: 6D, not split by `tensor`), q and
      the attention context (H·K each) and k, v (G·K each), the MLP's M-wide
      tensors (m = 2: fc_in and its GELU; m = 4 gated: fc_in, its SiLU, fc_gate
      and the product), and the attention logits and probabilities, one per
      query head (XLA's unfused attention materialises [B, H, T, T] twice; a
      flash kernel would not).  For the GPT-2 block this is
      B·T·c·(6D + 4D/t + 2M/t) + 2·B·(H/t)·T²·c.
  logits = B·T·⌈V/t⌉·4: one float32 [B, T, V] buffer, the loss's log-softmax
           (its gradient can be computed in place).  A chunked/fused
           cross-entropy would remove this term; this codebase's loss is unfused.
  gathered = c·D·(2·H·K/t + 2·G·K/t + n·M/t), n = 3 gated, else 2: one block's
           matrices whole along `fsdp`, in the compute dtype (12·D²·c for the
           GPT-2 block at t = 1).  FSDP cannot multiply by a weight it has not
           all-gathered, and the unit it gathers is a layer: the scanned body
           all-gathers its layer's weights at the top of each iteration (as
           PyTorch FSDP does per wrapped block), so one layer's are live at
           once, in the forward pass and again in the backward's recompute.
           For the 70B model this is 3.2 GiB (855M parameters × 4 bytes).
  ideal_bytes = state + acts + logits + gathered
What the ideal does NOT count: the all-gathered embedding table and lm_head
(V × D each, the largest gathered arrays; XLA:CPU gathers the lm_head before
the forward scan, so it is live at the forward pass's peak), more than one
layer's gathered weights or their whole-layer gradient before the
reduce-scatter, the token batch, cotangent (gradient-of-activation) buffers,
collectives' staging buffers, padding, XLA's layout copies, or fragmentation; and the CPU
compiler's buffer assignment is not the TPU/GPU one (different fusion and
rematerialisation), so ratios are evidence of scaling (does arguments shrink
1/P; do temporaries stay bounded with remat), not a device-memory promise.
A ratio near 1 means XLA holds little beyond the model; ≫ 1 points at a
temporary the model does not have (e.g. a replicated gradient or a gathered
parameter kept alive).

`depth` mode: compile time vs depth, the same model at `--layers` (default
2,12,24,48) with everything else fixed (`--width` default 128, heads 4, MLP
4 × width, vocabulary 512, context 128; `--sizes` is ignored; `--shape llama`:
the llama3_1_8b preset's block at `--width`, heads width / 64 (at least 4),
one KV head per 4, SwiGLU MLP 3.5 × width), so a `--set
model.scan_layers=True` run and a False run can be compared: an unrolled stack
compiles in time growing with depth, a scanned one in roughly constant time.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import subprocess
import sys
import time
import types
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every matrix of every block: configs/lm/shakespeare_char.BLOCK_KERNELS plus the
# gated MLP's third matrix (`mlp/fc_gate`, Llama's SwiGLU; GPT-2 has none).
BLOCK_KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|gate|out))/kernel"

# label → config overrides (dotted keys).  `{field}` in a string value is filled
# from the size (SIZES plus `quarter_width`); add rows freely.
VARIANTS: dict[str, dict[str, Any]] = {
    "dense": {},
    "lora": {"reparam.rules": ((BLOCK_KERNELS, "lora(rank=16)"), (r".*", "frozen"))},
    "lowrank": {"reparam.rules": ((BLOCK_KERNELS, "lowrank(rank={quarter_width})"),)},
    "spherical": {"reparam.rules": ((BLOCK_KERNELS, "spherical"),)},
    "qlora": {"reparam.rules": ((BLOCK_KERNELS, "q4(format=nf4, block_size=64)|lora(rank=16)"),
                                (r".*", "frozen"))},
}


def _size(**dims: Any) -> dict[str, Any]:
  return dims


def _preset_size(preset: str, seq: int, **narrow: int) -> dict[str, Any]:
  """A size read from reparam_jax.models.PRESETS[preset] (its vocabulary too), at context
  `seq`; `narrow` replaces dimensions (depth mode's narrow Llama)."""
  from reparam_jax.models.presets import PRESETS
  p = PRESETS[preset]
  dims = _size(layers=p["num_layers"], width=p["embed_dim"], heads=p["num_heads"],
               kv_heads=p.get("num_kv_heads") or p["num_heads"], mlp=p["mlp_dim"],
               vocab=p["vocab_size"], seq=seq, preset=preset)
  dims.update(narrow)
  return dims


# label → architecture.  gpt2-medium, 1.3b and 7b are GPT-2 style (tied embeddings,
# learned positions, biases, GELU MLP); the llama rows are the project's presets.
SIZES: dict[str, dict[str, Any]] = {
    # Width 256, not less: LoRA rank 16 must stay a small fraction of each matrix
    # for the smoke test's "LoRA's state is smaller than dense's" to mean anything.
    "tiny": _size(layers=2, width=256, heads=4, mlp=1024, vocab=256, seq=64),
    "gpt2-medium": _size(layers=24, width=1024, heads=16, mlp=4096, vocab=50257, seq=1024),
    "1.3b": _size(layers=24, width=2048, heads=16, mlp=8192, vocab=50257, seq=1024),
    "7b": _size(layers=32, width=4096, heads=32, mlp=16384, vocab=50257, seq=1024),
    # Context 2048: a common fine-tuning length, and the fp32 attention scores of the
    # XLA kernel ([B, H, T, T], twice) stay below the saved activations at it.
    "llama3.1-8b": _preset_size("llama3_1_8b", seq=2048),
    # The Llama block at test size (tests/perf/test_aot_compile.py).
    "tiny-llama": _preset_size("llama3_1_8b", seq=64, layers=2, width=256, heads=4,
                               kv_heads=2, mlp=896, vocab=256),
    "llama3.1-70b": _preset_size("llama3_1_70b", seq=2048),
}

DEPTH_LAYERS = (2, 12, 24, 48)
MEMORY_FIELDS = {  # our name → CompiledMemoryStats attribute (jax 0.12)
    "arguments_bytes": "argument_size_in_bytes",
    "outputs_bytes": "output_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "aliased_bytes": "alias_size_in_bytes",
    "code_bytes": "generated_code_size_in_bytes",
    "peak_memory_bytes": "peak_memory_in_bytes",
}


# --------------------------------------------------------------------------------------------
# Config: size + mesh + batch + variant + --set, on configs/lm/shakespeare_char.py
# --------------------------------------------------------------------------------------------

def size_overrides(size: dict[str, Any]) -> dict[str, Any]:
  out = {"model.num_layers": size["layers"], "model.embed_dim": size["width"],
         "model.num_heads": size["heads"], "model.mlp_dim": size["mlp"],
         "model.vocab_size": size["vocab"], "seq_len": size["seq"]}
  if "preset" in size:
    from reparam_jax.models.presets import PRESETS
    # The preset gives everything else (RMSNorm, SwiGLU, no biases, untied lm_head, RoPE
    # scaling); but a key of configs/base.py's model section overrides the preset, and
    # its `rope` is False, so RoPE is set from the preset here.
    out = {"model.preset": size["preset"], **out,
           "model.num_kv_heads": size.get("kv_heads", size["heads"]),
           "model.rope": PRESETS[size["preset"]].get("rope", False)}
  return out


def fill(value: Any, size: dict[str, int]) -> Any:
  """`{field}` in strings (also inside tuples) → the size's value; nothing else is touched."""
  if isinstance(value, str):
    fields = dict(size, quarter_width=size["width"] // 4)
    return re.sub(r"\{(\w+)\}", lambda m: str(fields[m.group(1)]) if m.group(1) in fields
                  else m.group(0), value)
  if isinstance(value, (tuple, list)):
    return type(value)(fill(v, size) for v in value)
  return value


def run_overrides(spec: dict[str, Any]) -> dict[str, Any]:
  """Every override of one run, in the order applied (later wins)."""
  size, mesh = spec["size"], spec["mesh"]
  out = size_overrides(size)
  out.update({"mesh.data": mesh["data"], "mesh.fsdp": mesh["fsdp"], "mesh.tensor": mesh["tensor"],
              "batch_size": spec["global_batch"], "eval_batch_size": spec["global_batch"],
              "perf.cpu_devices": 0})
  out.update({k: fill(v, size) for k, v in VARIANTS[spec["variant"]].items()})
  out.update(spec.get("set", {}))
  return out


def parse_set(items: list[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
      raise SystemExit(f"--set {item!r}: expected key=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a bare word: a string (`model.remat=dots`)
    out[key.strip()] = value
  return out


# --------------------------------------------------------------------------------------------
# The ideal (module docstring)
# --------------------------------------------------------------------------------------------

def remat_mode(remat: Any) -> str:
  if remat is True or remat in ("full", "True", "true"):
    return "full"
  if remat in (False, None, "none", "", "False", "false"):
    return "none"
  return str(remat)


def activation_bytes(size: dict[str, Any], per_device_batch: int, tensor: int, remat: Any,
                     compute_bytes: int) -> dict[str, int]:
  """(activations, logits) of the ideal, per device; see the module docstring.

  `size` has layers, width, heads, mlp, vocab, seq, and optionally kv_heads (GQA;
  default heads), head_dim (default width / heads) and gated (a SwiGLU/GeGLU MLP with
  a third matrix; default False): the GPT-2 block's figures are the defaults'.
  """
  L, D, M, H, V, T = (size[k] for k in ("layers", "width", "mlp", "heads", "vocab", "seq"))
  KV, K = size.get("kv_heads") or H, size.get("head_dim") or D // H
  B, c, t = per_device_batch, compute_bytes, tensor
  tokens = B * T
  ht = H // t if H % t == 0 else H  # heads not divisible: replicated along tensor
  kvt = KV // t if KV % t == 0 else KV
  mt = M // t if M % t == 0 else M
  q, kv = ht * K, kvt * K  # per-device widths of q (and the context) and of k, v each
  # M-wide tensors of the MLP's forward: fc_in's output and its activation, and when
  # gated also fc_gate's output and the product.
  mlp_tensors = 4 if size.get("gated") else 2
  layer = tokens * c * (6 * D + 2 * q + 2 * kv + mlp_tensors * mt) + 2 * B * ht * T * T * c
  mode = remat_mode(remat)
  # Matmuls without batch dimensions: q, k, v, attention out-projection, fc_in (and
  # fc_gate), fc_out.
  weight_dots = tokens * c * (q + 2 * kv + D + (2 if size.get("gated") else 1) * mt + D)
  # The two attention matmuls (batched over B, H): the logits [B, H, T, T] and the context.
  attention_dots = B * ht * T * T * c + tokens * c * q
  if mode == "full":
    acts = L * tokens * D * c + layer
  elif mode == "dots_no_batch":
    acts = L * (tokens * D * c + weight_dots) + layer
  elif mode == "dots":
    acts = L * (tokens * D * c + weight_dots + attention_dots) + layer
  else:  # none, and anything unknown: everything kept
    mode = "none"
    acts = L * layer
  return {"activations": int(acts), "logits": int(tokens * math.ceil(V / t) * 4),
          "remat_model": mode}


def gathered_layer_bytes(size: dict[str, Any], tensor: int, compute_bytes: int) -> int:
  """One block's matrices whole along `fsdp` (this device's `tensor` slice), in the
  compute dtype: the weights FSDP all-gathers to run one layer (module docstring)."""
  D, M, H = size["width"], size["mlp"], size["heads"]
  KV, K = size.get("kv_heads") or H, size.get("head_dim") or D // H
  t = tensor
  q = (H // t if H % t == 0 else H) * K  # query and out: [D, H·K], [H·K, D]
  kv = (KV // t if KV % t == 0 else KV) * K  # key and value: [D, G·K] each
  mt = M // t if M % t == 0 else M
  return int(compute_bytes * D * (2 * q + 2 * kv + (3 if size.get("gated") else 2) * mt))


# --------------------------------------------------------------------------------------------
# The child: one lower + compile
# --------------------------------------------------------------------------------------------

def _set_overrides(config: Any, overrides: dict[str, Any]) -> None:
  import dataclasses

  from reparam_jax.models import TransformerConfig
  # The model section passes every TransformerConfig field to the model
  # (models.transformer_config), also those configs/base.py does not list.
  model_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        if not (parents == ["model"] and leaf in model_fields):
          raise KeyError(leaf)
        with node.unlocked():
          node[leaf] = value
        continue
      if isinstance(value, bool) and isinstance(node[leaf], str):
        # A bool for a field that became a string (model.remat: True → 'True',
        # which the model reads as 'full'): the same command works before and after.
        value = str(value)
      node[leaf] = value
    except KeyError:
      raise ValueError(f"config has no key {key!r} (this codebase's configs/base.py does not "
                       "define it yet)") from None
    except TypeError as e:
      raise ValueError(f"config key {key!r} rejects {value!r}: {e}") from None


def child(spec: dict[str, Any]) -> dict[str, Any]:
  """Runs in a process started with `spec['devices']` simulated CPU devices."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from bench.lm_step import QUICKSTART, SyntheticLMTask
  from bench.memory import peak_rss_bytes
  from reparam_jax import regularizers
  from reparam_jax.config import load as config_load
  from reparam_jax.config import validate as config_validate
  from reparam_jax.reparam import Reparam
  from reparam_jax.training import freezing, optim, sharding, steps

  if jax.device_count() != spec["devices"]:
    raise RuntimeError(f"expected {spec['devices']} devices, JAX started with "
                       f"{jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
  config = config_load.load_config_file(QUICKSTART)
  _set_overrides(config, run_overrides(spec))
  config_validate.validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.validate_for_mesh(config, mesh)
  rules = sharding.rules_tuple(config.axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  # As training/loop.py builds them (no data: the synthetic task's loss and model).
  task = SyntheticLMTask(config, spec["size"]["vocab"])
  # The architecture compiled, after every override (--set may change a size's field,
  # a preset the rest): the model's own config.
  cfg = task.model().cfg
  size = _size(layers=cfg.num_layers, width=cfg.embed_dim, heads=cfg.num_heads,
               kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, mlp=cfg.mlp_dim,
               gated=cfg.mlp_gated, vocab=cfg.vocab_size, seq=config.seq_len)
  rp = Reparam.from_config(config.reparam)
  regularizer = regularizers.Regularizer(config.get("reg"), rp.plan)
  model = rp.wrap(task.model())
  schedule = optim.learning_rate_schedule(config.optimizer, config.num_steps)
  rng = jax.random.key(config.seed)
  make_tx = lambda p: optim.make_optimizer(
      config.optimizer, config.num_steps,
      freezing.combine(rp.trainable_mask(p), freezing.trainable_mask(p, config.get("finetune"))),
      default_decay=rp.decay_mask)

  # The trainer's create_train_state, traced only: its jit(init) never runs.
  built: dict[str, Any] = {}

  def build(key: Any) -> Any:
    state, shardings, tx = steps.create_train_state(
        steps.init_variables_fn(model, task.init_args()), make_tx, mesh, rules, key)
    built.update(shardings=shardings, tx=tx)
    return state

  t0 = time.perf_counter()
  abstract = jax.eval_shape(build, rng)
  state_shardings, tx = built["shardings"], built["tx"]
  abstract_state = steps.abstract_like(abstract, state_shardings)
  tokens = jax.ShapeDtypeStruct((config.batch_size, config.seq_len + 1), jnp.int32,
                                sharding=batch_sharding)
  abstract_batch = {"tokens": tokens}
  state_s = time.perf_counter() - t0
  rss = {"after_state": peak_rss_bytes()}

  train_step = jax.jit(
      steps.make_train_step(model, task, tx, rp, schedule, config.optimizer.grad_accum_steps,
                            jax.random.fold_in(rng, 1),
                            nan_at_step=config.reliability.nan_at_step,
                            penalties=regularizer.penalty if regularizer.active else None),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=(0,))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    t0 = time.perf_counter()
    lowered = train_step.lower(abstract_state, abstract_batch)
    t1 = time.perf_counter()
    rss["after_lower"] = peak_rss_bytes()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    rss["after_compile"] = peak_rss_bytes()

  stats = compiled.memory_analysis()
  rss["after_memory_analysis"] = peak_rss_bytes()
  mem = {k: (int(getattr(stats, a)) if getattr(stats, a, None) is not None else None)
         for k, a in MEMORY_FIELDS.items()}
  total = (mem["arguments_bytes"] + mem["temp_bytes"] + mem["outputs_bytes"]
           - mem["aliased_bytes"])

  # Counts of the variant's state, and of the dense architecture (an abstract init).
  params = abstract.params
  leaves = jax.tree.leaves(params)
  stored_params = sum(x.size for x in leaves)
  stored_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  mask = freezing.combine(rp.trainable_mask(params),
                          freezing.trainable_mask(params, config.get("finetune")))
  # ShapeDtypeStructs have no `nbytes`: count over stand-ins that do.
  sized = jax.tree.map(lambda x: types.SimpleNamespace(
      size=x.size, nbytes=x.size * x.dtype.itemsize), params)
  trainable = freezing.count_trainable(sized, mask)
  trainable_bytes = freezing.count_trainable(sized, mask, "nbytes")
  dense_vars = jax.eval_shape(steps.init_variables_fn(task.model(), task.init_args()), rng)
  dense_params = steps.count_params(nn.meta.unbox(dense_vars["params"]))
  opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.opt_state))

  mesh_cfg = {a: int(mesh.shape[a]) for a in ("data", "fsdp", "tensor")}  # after --set
  dp = sharding.data_parallel_size(mesh, rules)
  per_device_batch = config.batch_size // dp
  compute_bytes = jnp.dtype(config.model.dtype).itemsize
  acts = activation_bytes(size, per_device_batch, mesh_cfg["tensor"], config.model.remat,
                          compute_bytes)
  n = jax.device_count()
  state_ideal = (stored_bytes + 3 * trainable_bytes) / n
  gathered = gathered_layer_bytes(size, mesh_cfg["tensor"], compute_bytes)
  ideal = int(state_ideal + acts["activations"] + acts["logits"] + gathered)
  return {
      "mode": spec.get("mode", "memory"), "size": spec["size_label"],
      "layers": size["layers"], "width": size["width"], "heads": size["heads"],
      "kv_heads": size["kv_heads"], "head_dim": size["head_dim"], "mlp": size["mlp"],
      "gated_mlp": size["gated"], "vocab": size["vocab"], "seq": size["seq"],
      "preset": spec["size"].get("preset"),
      "params": int(dense_params), "stored_params": int(stored_params),
      "stored_param_bytes": int(stored_bytes), "trainable_params": int(trainable),
      "opt_state_bytes": int(opt_bytes),
      "mesh": f"{mesh_cfg['fsdp']}x{mesh_cfg['tensor']}" + (
          f" (data {mesh_cfg['data']})" if mesh_cfg["data"] != 1 else ""),
      "mesh_shape": dict(mesh.shape), "devices": n, "variant": spec["variant"],
      "overrides": run_overrides(spec),
      "global_batch": config.batch_size, "per_device_batch": per_device_batch,
      "remat": config.model.remat, "dtype": config.model.dtype,
      "scan_layers": config.model.get("scan_layers"),  # None where the key does not exist
      "reparam_per_layer": config.reparam.get("per_layer"),
      "state_build_s": round(state_s, 3), "lower_s": round(t1 - t0, 3),
      "compile_s": round(t2 - t1, 3),
      **mem, "total_bytes": int(total),
      "ideal_bytes": ideal, "ideal_state_bytes": int(state_ideal),
      "ideal_activation_bytes": acts["activations"], "ideal_logits_bytes": acts["logits"],
      "ideal_gathered_bytes": gathered,
      "ideal_remat_model": acts["remat_model"],
      "ratio": round(total / ideal, 3) if ideal else None,
      "child_peak_rss_bytes": peak_rss_bytes(),
      "child_peak_rss_by_phase": rss,
      "platform": jax.devices()[0].platform, "jax": jax.__version__,
  }


# --------------------------------------------------------------------------------------------
# The parent: one child per run, JSON lines, a table
# --------------------------------------------------------------------------------------------

def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={spec['devices']}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  head = {"size": spec["size_label"], "devices": spec["devices"], "variant": spec["variant"],
          "mesh": f"{spec['mesh']['fsdp']}x{spec['mesh']['tensor']}",
          "layers": spec["size"]["layers"], "overrides": run_overrides(spec)}
  try:
    proc = subprocess.run([sys.executable, "-m", "bench.aot_compile", "--child",
                           json.dumps(spec)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(head, error=f"timed out after {timeout:.0f} s")
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit {proc.returncode}"]
    return dict(head, error=err[0][:500])
  return json.loads(lines[-1])


def mesh_for(devices: int, fsdp: int | None, tensor: int, data: int) -> dict[str, int]:
  if fsdp is None:
    if devices % (tensor * data):
      raise SystemExit(f"--devices {devices} is not divisible by tensor × data = {tensor * data}")
    fsdp = devices // (tensor * data)
  if fsdp * tensor * data != devices:
    raise SystemExit(f"mesh data {data} × fsdp {fsdp} × tensor {tensor} != {devices} devices")
  return {"data": data, "fsdp": fsdp, "tensor": tensor}


def _unit(rows: list[dict[str, Any]]) -> tuple[str, int]:
  """GiB when any run needs one, else MiB (the smoke's figures are a few MiB)."""
  big = max((r.get("total_bytes") or 0 for r in rows), default=0) >= 2**30
  return ("GiB", 2**30) if big else ("MiB", 2**20)


def table(rows: list[dict[str, Any]], mode: str) -> str:
  unit, scale = _unit(rows)
  if mode == "depth":
    cols = [("layers", "layers"), ("width", "width"), ("variant", "variant"),
            ("remat", "remat"), ("scan_layers", "scan"),
            ("mesh", "mesh"), ("lower_s", "lower s"), ("compile_s", "compile s"),
            ("temp_bytes", "temp UNIT")]
  else:
    cols = [("size", "size"), ("params", "params"), ("mesh", "mesh"), ("devices", "devices"),
            ("variant", "variant"), ("lower_s", "lower s"), ("compile_s", "compile s"),
            ("arguments_bytes", "args UNIT"), ("temp_bytes", "temp UNIT"),
            ("outputs_bytes", "out UNIT"), ("aliased_bytes", "alias UNIT"),
            ("total_bytes", "total UNIT"), ("ideal_bytes", "ideal UNIT"), ("ratio", "ratio")]
  cols = [(k, h.replace("UNIT", unit)) for k, h in cols]
  lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r.get('size')} | error ({r.get('variant')}, {r.get('devices')} devices): "
                   f"{r['error'][:160]} |")
      continue
    cells = []
    for k, _ in cols:
      v = r.get(k)
      if k.endswith("_bytes"):
        cells.append("–" if v is None else f"{v / scale:.{3 if unit == 'GiB' else 2}f}")
      elif k == "params" and v is not None:
        cells.append(f"{v / 1e6:.1f}M")
      else:
        cells.append("–" if v is None else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("mode", nargs="?", default="memory", choices=("memory", "depth"))
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny size, 8 devices, dense + lora (overridable)")
  parser.add_argument("--sizes", default="gpt2-medium", help=f"comma list of {list(SIZES)}")
  parser.add_argument("--variants", default=None,
                      help=f"comma list of {list(VARIANTS)} (memory: all; depth: dense)")
  parser.add_argument("--devices", default=None, help="comma list of device counts (default 8)")
  parser.add_argument("--fsdp", type=int, default=None,
                      help="fsdp axis (default devices / (tensor × data))")
  parser.add_argument("--tensor", type=int, default=1)
  parser.add_argument("--data", type=int, default=1)
  parser.add_argument("--batch_per_shard", type=int, default=8,
                      help="sequences per data-parallel shard (global = this × data × fsdp)")
  parser.add_argument("--global_batch", type=int, default=None)
  parser.add_argument("--layers", default=",".join(map(str, DEPTH_LAYERS)),
                      help="depth mode: comma list of depths")
  parser.add_argument("--width", type=int, default=128, help="depth mode: width")
  parser.add_argument("--shape", default="gpt2", choices=("gpt2", "llama"),
                      help="depth mode: GPT-2 block (heads 4, MLP 4 × width) or the "
                           "llama3_1_8b preset's block narrowed (heads width/64, 4 per "
                           "KV head, SwiGLU MLP 3.5 × width)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override applied last (repeatable); Python literal or word")
  parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
  parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
  args = parser.parse_args(argv)

  if args.child is not None:
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return []

  mode = args.mode
  if args.smoke:
    sizes = {"tiny": SIZES["tiny"]}
    variants = (args.variants or "dense,lora").split(",")
    devices = [int(d) for d in (args.devices or "8").split(",")]
  elif mode == "depth":
    w = args.width
    if args.shape == "llama":
      heads = max(w // 64, 4)
      sizes = {f"depth-llama-w{w}-L{n}": _preset_size(
          "llama3_1_8b", seq=128, layers=int(n), width=w, heads=heads, kv_heads=heads // 4,
          mlp=w * 7 // 2, vocab=512) for n in args.layers.split(",")}
    else:
      sizes = {f"depth-w{w}-L{n}": _size(layers=int(n), width=w, heads=4, mlp=4 * w, vocab=512,
                                         seq=128) for n in args.layers.split(",")}
    variants = (args.variants or "dense").split(",")
    devices = [int(d) for d in (args.devices or "8").split(",")]
  else:
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
      parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    sizes = {s: SIZES[s] for s in args.sizes.split(",")}
    variants = (args.variants or ",".join(VARIANTS)).split(",")
    devices = [int(d) for d in (args.devices or "8").split(",")]
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    parser.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
  sets = parse_set(args.set)

  rows = []
  for label, size in sizes.items():
    for n in devices:
      mesh = mesh_for(n, args.fsdp if len(devices) == 1 else None, args.tensor, args.data)
      batch = args.global_batch or args.batch_per_shard * mesh["data"] * mesh["fsdp"]
      for variant in variants:
        spec = {"mode": mode, "size_label": label, "size": size, "devices": n, "mesh": mesh,
                "variant": variant, "global_batch": batch, "set": sets}
        row = run_child(spec, args.timeout)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(line + "\n")
  print()
  print(table(rows, mode), flush=True)
  return rows


if __name__ == "__main__":
  main()
