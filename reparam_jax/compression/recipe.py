"""The compression pipeline behind `python -m reparam_jax.compress`: recipe, steps, report.

See that command (and docs/compression.md) for the recipe language.  The
state is a float model (dense or low-rank kernels, pruned entries stored as
zeros) plus optionally a quantization applied on top for storage; every
step's checkpoint is self-contained.  `remove` makes the model itself smaller
(attention heads and MLP units gone, per-layer shapes in the state's
`model_shapes`): the steps, evaluations, fine-tuning and the written
config.json after it use the smaller model's config.  Fine-tuning runs the real training
loop (`training.loop.train_and_evaluate`) on the float weights with the
pruned entries held at zero and, when quantized, fake-quantized.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import re
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.core import meta

from reparam_jax import tasks
from reparam_jax.compression import calibration as calib_lib
from reparam_jax.compression import methods, structured
from reparam_jax.compression.methods import gptq as gptq_lib
from reparam_jax.config.base import COMPRESS_KERNELS
from reparam_jax.data import tokenizers
from reparam_jax.errors import UserError
from reparam_jax.models import Transformer
from reparam_jax.models.heads import EncoderWithHeads
from reparam_jax.pytree.layers import has_stack, like, unstack_layers
from reparam_jax.pytree.paths import subtree
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import Plan, map_theta, parse_spec
from reparam_jax.reparam.state import get_in, set_in, state_stages
from reparam_jax.reparam.transforms import packed, smooth
from reparam_jax.reparam.transforms.mask_update import prune_now
from reparam_jax.reparam.transforms.quant import quantize as int_quantize
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir import workdir as rundir
from reparam_jax.rundir.checkpoint import sync
from reparam_jax.rundir.workdir import load_run
from reparam_jax.sparsity import sensitivity
from reparam_jax.training.evaluate import Evaluator
from reparam_jax.training.loop import train_and_evaluate

PyTree = Any
KERNELS = COMPRESS_KERNELS

# The calibration-based methods (compression/methods/<name>.py), each registering itself
# in `methods.METHODS` at import; each is a recipe step of its name.
METHOD_MODULES = ("gptq", "sparsegpt", "wanda", "awq", "smoothquant")
for _name in METHOD_MODULES:
  importlib.import_module(f"reparam_jax.compression.methods.{_name}")
PRUNING_METHODS = ("sparsegpt", "wanda")
# A step's first positional argument: gptq(3) is gptq(bits=3), sparsegpt('2:4') the sparsity.
FIRST_ARG = {"gptq": "bits", "awq": "bits", "sparsegpt": "sparsity", "wanda": "sparsity",
             "smoothquant": "alpha", "rtn": "bits"}


# ---------------------------------------------------------------------------
# Recipe parsing: "svd(rank=32),prune(magnitude,0.5),quantize(int8)".


@dataclasses.dataclass
class Step:
  name: str
  args: tuple
  kwargs: dict

  def text(self) -> str:
    parts = [repr(a) if isinstance(a, str) and not a.isidentifier() else str(a) for a in self.args]
    parts += [f"{k}={v}" for k, v in self.kwargs.items()]
    return f"{self.name}({', '.join(parts)})"


def _literal(node: ast.AST) -> Any:
  if isinstance(node, ast.Name):
    return node.id
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise UserError(f"recipe: {ast.unparse(node)!r} is not a literal") from None


def parse_recipe(text: str) -> list[Step]:
  try:
    tree = ast.parse(f"[{text}]", mode="eval").body
  except SyntaxError:
    raise UserError(f"cannot parse recipe {text!r}; expected e.g. "
                    "svd(rank=32),prune(magnitude,0.5),quantize(int8)") from None
  steps = []
  for node in tree.elts:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise UserError(f"recipe item {ast.unparse(node)!r}: expected name(args)")
    step = Step(node.func.id, tuple(_literal(a) for a in node.args),
                {k.arg: _literal(k.value) for k in node.keywords})
    known = list(STEPS) + ["calibration"] + sorted(methods.METHODS)
    if step.name not in known:
      raise UserError(f"unknown recipe step {step.name!r}; known: {', '.join(known)}")
    steps.append(step)
  if not steps:
    raise UserError("empty recipe")
  return steps


# ---------------------------------------------------------------------------
# Pipeline state: a float model (dense or low-rank kernels, pruned entries
# stored as zeros) and optionally a quantization applied on top for storage.


@dataclasses.dataclass
class State:
  theta: PyTree            # float θ under `base_rules`
  rank: int = 0            # 0: dense kernels; > 0: lowrank(rank)
  bits: int = 0            # 0: float storage; else qweight(bits)
  sparse: bool = False     # some entries were pruned (stored zeros)
  kernels: str = KERNELS
  grid: tuple = ()         # (bits, group, sym) when the kernels lie on a group grid (gptq, rtn, awq)
  grid_step: str = ""      # the step that put them there
  grids: dict | None = None  # kernel path → its GroupGrid, stored `packed` (None: stored float)
  # kernel path → the input scale s of AWQ / SmoothQuant: the layer computes inner(x / s),
  # stored as `<inner>|smooth` with the base holding diag(s)·w (None: no input scales)
  input_scales: dict | None = None
  input_stage: str = ""  # the inner stage under `smooth`: "" = the packed grid, else a spec
  # every pruned kernel keeps at most 2 of each 4 consecutive d_in entries: stored `sparse24`
  # (values + 2-bit indices) instead of with its zeros
  sparse24: bool = False
  # config.model fields a `remove` step changed (layer_heads, layer_mlp_dims, scan_layers):
  # the state's model is the run's with these (`model_config`)
  model_shapes: dict = dataclasses.field(default_factory=dict)

  def model_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run's `config` describing this state's model (a copy where `remove` changed it)."""
    if not self.model_shapes:
      return config
    out = ml_collections.ConfigDict(config.to_dict())
    for name, value in self.model_shapes.items():
      out.model[name] = value
    return out

  def packed_rule(self) -> str:
    bits, group, sym = self.grid
    return f"packed(bits={bits}, group={group}, sym={sym})"

  def base_rules(self) -> tuple:
    return ((self.kernels, f"lowrank(rank={self.rank})"),) if self.rank else ()

  def storage_rules(self) -> tuple:
    if self.input_scales:
      inner = self.input_stage or (self.packed_rule() if self.grids else "identity")
      return ((self.kernels, f"{inner}|smooth"),)
    if self.grids and self.rank:  # each factor (u and v) on its own grid
      return ((self.kernels, f"lowrank(rank={self.rank})|{self.packed_rule()}"),)
    if self.grids:
      return ((self.kernels, self.packed_rule()),)
    if self.sparse24 and not (self.bits or self.rank):
      return ((self.kernels, "sparse24"),)
    if not self.bits:
      return self.base_rules()
    q = f"qweight(bits={self.bits})"
    return ((self.kernels, f"lowrank(rank={self.rank})|{q}" if self.rank else q),)

  def storage_params(self) -> PyTree:
    if self.input_scales:
      node = parse_spec(self.storage_rules()[0][1])

      def scaled(path, w):
        s = self.input_scales[path]
        if self.grids and not self.input_stage:  # the grid holds diag(s)·w: stored packed
          dtype = jnp.asarray(w).dtype
          return {"base": packed.theta_from_grid(self.grids[path], dtype),
                  "smooth_s": jnp.asarray(s, dtype)}
        return smooth.scaled_theta(node, jnp.asarray(w), s)
      return map_kernel_slots_with_path(self.theta, self.kernels, scaled)
    if self.grids and self.rank:  # grids keyed `<kernel path>/u` and `/v`
      return map_theta(Plan.from_config({"rules": self.base_rules()}), self.theta,
                       lambda path, rule, t: t if rule is None else {
                           k: packed.theta_from_grid(self.grids[f"{path}/{k}"],
                                                     jnp.asarray(f).dtype)
                           for k, f in t.items()})
    if self.grids:  # each kernel as `packed`'s θ: the codes packed into bytes, its scales
      return map_kernel_slots_with_path(
          self.theta, self.kernels,
          lambda path, w: packed.theta_from_grid(self.grids[path], jnp.asarray(w).dtype))
    if self.sparse24 and not (self.bits or self.rank):
      return map_kernel_slots_with_path(
          self.theta, self.kernels, lambda _, w: packed.Sparse24().from_dense(w))
    if not self.bits:
      return self.theta
    return quantize_leaves(self.theta, self.base_rules(), self.kernels, self.bits)

  def train_rules(self) -> tuple:
    """Rules to fine-tune this state: zeros held by a threshold-0 mask, quant as fake-quant."""
    keep = "mask(method=threshold, threshold=0.0, begin_step=0, end_step=0)"
    stages = [f"lowrank(rank={self.rank})"] if self.rank else []
    if self.bits and not self.rank:
      stages.append(f"quant(bits={self.bits})")
    if self.sparse:
      stages.append(keep)
    return ((self.kernels, "|".join(stages)),) if stages else ()

  def train_params(self) -> PyTree:
    """`theta` in the structure of `train_rules` (each added stage wraps its slot as {'w': …})."""
    n_wraps = sum([bool(self.bits and not self.rank), self.sparse])
    if not n_wraps:
      return self.theta

    def wrap(x):
      for _ in range(n_wraps):
        x = {"w": x}
      return x
    return map_kernel_slots(self.theta, self.base_rules(), self.kernels, wrap)


def map_kernel_slots(theta: PyTree, base_rules: tuple, kernels: str, fn) -> PyTree:
  """Applies `fn` to each weight-like array of the kernels (W, or the factors u and v)."""
  if base_rules:
    return map_theta(Plan.from_config({"rules": base_rules}), theta,
                     lambda p, r, t: t if r is None else {k: fn(v) for k, v in t.items()})
  pattern = re.compile(kernels)

  def rec(tree, path):
    if isinstance(tree, dict):
      return {k: rec(v, f"{path}/{k}" if path else k) for k, v in tree.items()}
    return fn(tree) if pattern.fullmatch(path) else tree
  return rec(theta, "")


def map_kernel_slots_with_path(theta: PyTree, kernels: str, fn) -> PyTree:
  """`fn(path, w)` on each dense kernel matching `kernels` (an unrolled θ)."""
  pattern = re.compile(kernels)

  def rec(tree, path):
    if isinstance(tree, dict):
      return {k: rec(v, f"{path}/{k}" if path else k) for k, v in tree.items()}
    return fn(path, tree) if pattern.fullmatch(path) else tree
  return rec(theta, "")


def quantize_leaves(theta: PyTree, base_rules: tuple, kernels: str, bits: int) -> PyTree:
  def q(w):
    values, scale = int_quantize(jnp.asarray(w), bits)
    return {"q": values, "scale": scale}
  return map_kernel_slots(theta, base_rules, kernels, q)


def fold_masks(theta: PyTree, masks: PyTree, rules: tuple) -> PyTree:
  """Masked θ (mask stages wrapping each slot as {'w': …}) → base θ with zeros stored."""
  def fn(path, rule, t):
    if rule is None:
      return t
    aux = subtree(masks, path)
    out = t
    for _, kp in state_stages(rule.node, t):
      slot = get_in(t, kp)
      out = set_in(out, kp, jnp.where(get_in(aux, kp)["mask"], slot["w"], 0.0))
    return out
  return map_theta(Plan.from_config({"rules": rules}), theta, fn)


# ---------------------------------------------------------------------------
# Steps.


def _refuse_after_grid(state: State, step: Step) -> None:
  if state.grid:
    raise UserError(f"{step.name} after {state.grid_step}: the kernels already lie on "
                    f"{state.grid_step.split('(')[0]}'s grid; put {step.name} before it")


def step_svd(state: State, step: Step, **_) -> State:
  _refuse_after_grid(state, step)
  if state.rank or state.bits:
    raise UserError("svd must come before prune/quantize and only once in a recipe")
  rank = int(step.kwargs.get("rank", step.args[0] if step.args else 0))
  method = step.kwargs.get("method", "svd")
  rules = ((state.kernels, f"lowrank(rank={rank}, method={method!r})"),)
  theta = Reparam.from_config({"rules": rules}).from_dense(state.theta)
  return dataclasses.replace(state, theta=theta, rank=rank, sparse=False)


def _mask_rules(state: State, step: Step, config: ml_collections.ConfigDict,
                sparsity: float) -> tuple:
  kw = dict(step.kwargs)
  pattern = kw.pop("pattern", "unstructured")
  scope = kw.pop("scope", "layer")
  if pattern in ("heads", "neurons"):
    if state.rank:
      raise UserError("structured (heads/neurons) pruning needs dense kernels, not low-rank")
    _refuse_per_layer_shapes(config, step)
    groups = {"heads": config.model.num_heads, "neurons": config.model.mlp_dim}[pattern]
    extra = f"sparsity={sparsity}, scope={scope!r}"
    return sensitivity.group_rules(pattern, config.model.num_heads, config.model.mlp_dim,
                                   1 if pattern == "neurons" else config.model.mlp_dim,
                                   method="magnitude", extra=extra) if groups else ()
  spec = f"mask(sparsity={sparsity}, scope={scope!r}, pattern={pattern!r})"
  base = f"lowrank(rank={state.rank})|" if state.rank else ""
  return ((state.kernels, base + spec),)


def _refuse_per_layer_shapes(config, step: Step) -> None:
  """Head and neuron masks cut every layer into num_heads / mlp_dim groups alike."""
  if config.model.get("layer_heads") or config.model.get("layer_mlp_dims"):
    raise UserError(f"{step.text()}: head/neuron masks need every layer at num_heads and "
                    "mlp_dim, but this model has per-layer shapes (layer_heads/layer_mlp_dims, "
                    "as remove leaves them); remove more units with remove(keep_heads=..., "
                    "keep_neurons=...) instead")


def _masked_theta(state: State, rules: tuple) -> PyTree:
  """θ of `state` under mask `rules` (each masked kernel slot wrapped as {'w': …})."""
  if not state.rank:
    return Reparam.from_config({"rules": rules}).from_dense(state.theta)  # {'w': w} per weight
  return map_kernel_slots(state.theta, state.base_rules(), state.kernels, lambda x: {"w": x})


def _prune_to(state: State, step: Step, config, sparsity: float) -> tuple[State, dict]:
  rules = _mask_rules(state, step, config, sparsity)
  theta = _masked_theta(state, rules)
  rp = Reparam.from_config({"rules": rules})
  masks = prune_now(theta, rp.init_state(theta), rp.plan)
  folded = fold_masks(theta, masks, rules)
  return dataclasses.replace(state, theta=folded, sparse=True), {}


def step_prune(state: State, step: Step, config, evaluator, finetune, log, **_) -> State:
  _refuse_after_grid(state, step)
  if state.bits:
    raise UserError("prune must come before quantize")
  if not step.args:
    raise UserError("prune needs a method: prune(magnitude, 0.5), prune(threshold, 1e-3), "
                    "prune(sensitivity, 0.25)")
  method = step.args[0]
  value = float(step.args[1]) if len(step.args) > 1 else float(step.kwargs.pop("sparsity", 0.5))
  if method == "magnitude":
    rounds = int(step.kwargs.pop("rounds", 1))
    for r in range(1, rounds + 1):
      s_r = 1.0 - (1.0 - value) ** (r / rounds)
      state, _ = _prune_to(state, step, config, s_r)
      if rounds > 1:
        log(f"  round {r}/{rounds}: sparsity {s_r:.4f}")
        if r < rounds and finetune is not None:
          state = finetune(state, f"round{r}")
    return state
  if method == "threshold":
    def zero_small(w):
      return jnp.where(jnp.abs(w) > value, w, 0.0)
    theta = map_kernel_slots(state.theta, state.base_rules(), state.kernels, zero_small)
    return dataclasses.replace(state, theta=theta, sparse=True)
  if method == "sensitivity":
    if state.rank:
      raise UserError("sensitivity pruning works on dense kernels (put it before svd)")
    _refuse_per_layer_shapes(config, step)
    kw = step.kwargs
    rules = sensitivity.group_rules(kw.get("granularity", "heads"), config.model.num_heads,
                                    config.model.mlp_dim, int(kw.get("neuron_block", 32)))
    theta = _masked_theta(state, rules)
    masks = Reparam.from_config({"rules": rules}).init_state(theta)
    batches = int(kw.get("batches", 4))
    metric = lambda m: evaluator(theta, rules, m, batches)["loss"]  # noqa: E731
    masks, _ = sensitivity.sensitivity_prune(
        theta, masks, rules, metric, value, float(kw.get("max_drop", float("inf"))),
        int(kw.get("per_round", 1)), log=lambda s: log("  " + s))
    return dataclasses.replace(state, theta=fold_masks(theta, masks, rules), sparse=True)
  raise UserError(f"prune method {method!r}: use magnitude, threshold or sensitivity "
                  "(movement pruning trains: see configs/lm/shakespeare_char_prune.py)")


def step_quantize(state: State, step: Step, **_) -> State:
  _refuse_after_grid(state, step)
  kind = step.args[0] if step.args else step.kwargs.get("dtype", "int8")
  bits = {"int8": 8, "int4": 4}.get(kind)
  if bits is None:
    raise UserError(f"quantize({kind!r}): use int8 or int4")
  return dataclasses.replace(state, bits=bits)


def _method_options(step: Step, fn) -> dict:
  """The step's options as keyword arguments of `fn`; unknown ones are a one-line error."""
  kwargs = dict(step.kwargs)
  if step.args:
    if len(step.args) > 1 or step.name not in FIRST_ARG:
      raise UserError(f"{step.text()}: give the options by name, e.g. "
                      f"{step.name}({FIRST_ARG.get(step.name, 'option')}=...)")
    kwargs[FIRST_ARG[step.name]] = step.args[0]
  params = inspect.signature(fn).parameters
  allowed = [k for k in params if k not in ("w_IxO", "stats")]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise UserError(f"{step.text()}: unknown option {unknown[0]!r}; {step.name} takes "
                    f"{', '.join(allowed)}")
  return kwargs


def _grid_of(step: Step, options: dict, fn) -> tuple:
  params = inspect.signature(fn).parameters
  get = lambda k, *names: next((options[n] for n in (k, *names) if n in options),  # noqa: E731
                               next((params[n].default for n in (k, *names) if n in params),
                                    None))
  return (int(get("bits")), int(get("group")), bool(get("sym", "symmetric")))


def all_2_of_4(theta: PyTree, kernels: str) -> bool:
  """Whether every kernel keeps at most 2 of each 4 consecutive d_in entries (and d_in is a
  multiple of 4): then `sparse24` stores it exactly."""
  ok = []

  def visit(_, w):
    w = np.asarray(w)
    ok.append(w.ndim == 2 and w.shape[0] % 4 == 0 and bool(
        ((w.reshape(w.shape[0] // 4, 4, -1) != 0).sum(axis=1) <= 2).all()))
    return w
  map_kernel_slots_with_path(theta, kernels, visit)
  return bool(ok) and all(ok)


# The calibrated steps that take a low-rank state: the factors quantized, each on its grid.
LOWRANK_STEPS = ("gptq", "rtn")


def _check_dense_state(state: State, step: Step) -> None:
  """The combinations the calibrated methods support: dense kernels (LoRA and other
  adapters are merged when the pipeline loads the run) or, for GPTQ and RTN, the factors
  of svd; before quantize, not twice on a grid, and quantizers not after pruning (their
  updates would fill the pruned entries)."""
  if state.rank and step.name not in LOWRANK_STEPS:
    raise UserError(f"{step.name} after svd: of the calibrated methods only "
                    f"{' and '.join(LOWRANK_STEPS)} quantize low-rank factors; put "
                    f"{step.name} before svd")
  if state.bits:
    raise UserError(f"{step.name} after quantize: put {step.name} before quantize")
  _refuse_after_grid(state, step)
  if state.sparse and step.name not in PRUNING_METHODS:
    raise UserError(f"{step.name} after pruning: its weight updates would fill the pruned "
                    "entries; prune with sparsegpt/wanda after it, or use it alone")


def step_rtn(state: State, step: Step, **_) -> State:
  """Round-to-nearest on the group grid (`methods.rtn`), the calibrated methods' baseline."""
  _check_dense_state(state, step)
  if "sym" in step.kwargs:  # gptq's name of the option
    step.kwargs["symmetric"] = step.kwargs.pop("sym")
  options = _method_options(step, methods.rtn)
  grid = _grid_of(step, options, methods.rtn)
  grids = {}
  if state.rank:  # each factor on its stored grid: u [I, R] and v [O, R], groups along dim 0
    def factors(path, rule, t):
      if rule is None:
        return t
      out = {}
      for k, f in t.items():
        f = np.asarray(f, np.float32)
        grids[f"{path}/{k}"] = methods.rtn(f, grid[0], methods.fitting_group(grid[1], len(f)),
                                           grid[2])
        out[k] = jnp.asarray(grids[f"{path}/{k}"].dequantize(), t[k].dtype)
      return out
    theta = map_theta(Plan.from_config({"rules": state.base_rules()}), state.theta, factors)
    return dataclasses.replace(state, theta=theta, grid=grid, grid_step=step.text(),
                               grids=_packable(grids, grid, theta))

  def one(path, w):
    grids[path] = methods.rtn(np.asarray(w, np.float32), **options)
    return jnp.asarray(grids[path].dequantize(), w.dtype)
  theta = map_kernel_slots_with_path(state.theta, state.kernels, one)
  return dataclasses.replace(state, theta=theta, grid=grid, grid_step=step.text(),
                             grids=_packable(grids, grid, theta))


def _packable(grids: dict, grid: tuple, theta: PyTree) -> dict | None:
  """`grids` if every kernel can be stored `packed` (an unrolled θ, d_in a multiple of the
  codes a packed chunk holds), else None: the kernels stay float (on the grid)."""
  if not grids or None in grids.values() or has_stack(theta):
    return None
  rows_per_chunk = packed.chunk(grid[0])[0]
  if any(g.codes.shape[0] % rows_per_chunk for g in grids.values()):
    return None
  if any(g.group != grid[1] for g in grids.values()):  # one `packed` rule: one group size
    return None
  return grids


def _blockwise_setup(params: PyTree, step: Step, config, evaluator: Evaluator, log,
                     calibration: calib_lib.Calibration, calibration_cache: dict,
                     workdir: str) -> tuple[Any, PyTree, calib_lib.CalibrationSet, bool]:
  """(model, its dense params, the calibration inputs, whether `params` was scanned): what
  `calib_lib.compress_blockwise` takes, for the model `config` describes.  A scanned stack
  is calibrated block by block in the unrolled layout of the same weights."""
  scanned = has_stack(params)
  model_config = ml_collections.ConfigDict(config.to_dict())
  if scanned:
    params = unstack_layers(params)
    model_config.model.scan_layers = False
  task = evaluator.task
  if not hasattr(type(task), "model_from_config"):
    raise UserError(f"{step.name}: task {config.task!r} cannot build its model from the "
                    "config; calibration is not supported for it")
  model = type(task).model_from_config(model_config, task.tokenizer.vocab_size)[0]
  if calibration not in calibration_cache:  # the inputs do not depend on the layers' shapes
    max_len = getattr(getattr(model, "cfg", None), "max_len", None) or config.seq_len
    calibration_cache[calibration] = calib_lib.calibration_inputs(
        config, workdir, calibration, max_len, log)
  inputs = calibration_cache[calibration]
  # evaluator.mesh is the run's: config.mesh over this process's devices, as trained
  log(f"  {step.text()}: calibrating on {inputs.shape[0]} sequences of {inputs.shape[1]} "
      f"tokens, mesh {dict(evaluator.mesh.shape)}")
  return model, params, inputs, scanned


def step_calibrated(state: State, step: Step, config, evaluator, log,
                    calibration: calib_lib.Calibration, calibration_cache: dict,
                    workdir: str, **_) -> State:
  """A calibration-based method (`methods.METHODS[step.name]`) on every selected kernel,
  block by block on the calibration set (compression/calibration.py)."""
  _check_dense_state(state, step)
  fn = methods.METHODS[step.name]
  options = _method_options(step, fn)
  module = inspect.getmodule(fn)
  joint = getattr(module, "apply_joint", None)
  params = state.theta
  if state.rank:  # the blocks run on U Vᵀ; the factors are quantized (one_factored)
    if step.name != "gptq" or options.get("act_order") or options.get("static_groups"):
      raise UserError(f"{step.text()} after svd: the factors take gptq(bits, group, sym, "
                      "damp) without act_order/static_groups")
    if has_stack(params):
      raise UserError(f"{step.text()} after svd: a scanned low-rank model is not supported; "
                      "train or convert it with model.scan_layers=False")
    params = Reparam.from_config({"rules": state.base_rules()}).to_dense(state.theta)
  model, params, inputs, scanned = _blockwise_setup(params, step, config, evaluator, log,
                                                    calibration, calibration_cache, workdir)
  mesh = evaluator.mesh
  pattern = re.compile(state.kernels)
  selected = lambda path: bool(pattern.fullmatch(f"{path}/kernel"))  # noqa: E731
  grids, scales = {}, {}  # a kernel's grid (of diag(s)·w where it has an input scale s)

  def keep(path, result):
    grids[path] = result.grid
    if result.input_scale_I is not None:
      scales[path] = np.asarray(result.input_scale_I)
    return result.weight_IxO

  def one(path, w, stats):
    return keep(path, fn(w, stats, **options))

  factors: dict = {}  # low-rank: kernel path → its quantized {u, v}

  def one_factored(path, w, stats):  # GPTQ of the kernel's factors; the blocks see Û V̂ᵀ
    t = get_in(state.theta, tuple(path.split("/")))
    grid_u, grid_v = gptq_lib.apply_factors(
        np.asarray(t["u"], np.float32), np.asarray(t["v"], np.float32), stats,
        **{k: v for k, v in options.items() if k not in ("act_order", "static_groups")})
    grids[f"{path}/u"], grids[f"{path}/v"] = grid_u, grid_v
    factors[path] = {"u": grid_u.dequantize(), "v": grid_v.dequantize()}
    return factors[path]["u"] @ factors[path]["v"].T

  shared = None
  if joint is not None:
    def shared(paths, ws, stats):
      return [keep(p, r) for p, r in zip(paths, joint(ws, stats, **options))]
  new = calib_lib.compress_blockwise(model, params, inputs, selected,
                                     one_factored if state.rank else one, calibration,
                                     log=log, compress_shared=shared, mesh=mesh,
                                     rules=evaluator.rules)
  if scanned:
    new = like(new, state.theta)
  if state.rank:
    grid = _grid_of(step, options, fn)
    theta = map_theta(Plan.from_config({"rules": state.base_rules()}), state.theta,
                      lambda path, rule, t: t if rule is None else {
                          k: _like_sharded(factors[path][k], t[k]) for k in t})
    return dataclasses.replace(state, theta=theta, grid=grid, grid_step=step.text(),
                               grids=_packable(grids, grid, theta))
  if step.name in PRUNING_METHODS:
    return dataclasses.replace(state, theta=new, sparse=True)
  if "bits" in inspect.signature(fn).parameters:
    grid = _grid_of(step, options, fn)
  elif step.name == "smoothquant" and options.get("quantize", True):
    grid = (8, 0, True)  # int8 per output channel, symmetric
  else:
    grid = ()
  # SmoothQuant runs W8A8: the layer quantizes x / s per token at run time (quant's act_bits)
  # over its int8-grid weight, so its base is `quant`, not the packed grid.
  w8a8 = step.name == "smoothquant" and bool(grid)
  return dataclasses.replace(
      state, theta=new, grid=grid, grid_step=step.text() if grid else "",
      grids=None if w8a8 or not grid else _packable(grids, grid, new),
      # A scanned θ keeps the effective float weights (the scales are per unrolled layer).
      input_scales=None if has_stack(new) else (scales or None),
      input_stage="quant(bits=8, act_bits=8)" if w8a8 else ("" if grid else "identity"))


def _like_sharded(new: np.ndarray, old: jax.Array) -> jax.Array:
  """`new` in `old`'s dtype and, where `old` is a placed jax array, its sharding."""
  new = jnp.asarray(new, old.dtype)
  return jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new


# ---------------------------------------------------------------------------
# Structured removal: whole heads and MLP units out of the model (compression/structured.py).

REMOVE_OPTIONS = ("keep_heads", "keep_neurons", "score", "across_layers")
REMOVE_SCORES = ("magnitude", "activation")


def _keep_option(step: Step, name: str) -> structured.Keep | None:
  """A `keep_*` option as `prune_heads`/`prune_neurons` take it (None: not given)."""
  value = step.kwargs.get(name)
  if value is None:
    return None
  if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
    return value
  if isinstance(value, (list, tuple)) and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    return tuple(value)
  raise UserError(f"{step.text()}: {name}={value!r}; give a fraction in (0, 1] of each "
                  "layer's units (0.5), a count for every layer (2) or one count per layer "
                  "([2, 4])")


def _remove_options(step: Step) -> dict:
  if step.args:
    raise UserError(f"{step.text()}: give the options by name, e.g. "
                    "remove(keep_heads=0.5, keep_neurons=0.5)")
  unknown = sorted(set(step.kwargs) - set(REMOVE_OPTIONS))
  if unknown:
    raise UserError(f"{step.text()}: unknown option {unknown[0]!r}; remove takes "
                    f"{', '.join(REMOVE_OPTIONS)}")
  options = {"keep_heads": _keep_option(step, "keep_heads"),
             "keep_neurons": _keep_option(step, "keep_neurons"),
             "score": step.kwargs.get("score", "magnitude"),
             "across_layers": step.kwargs.get("across_layers", False)}
  if options["keep_heads"] is None and options["keep_neurons"] is None:
    raise UserError(f"{step.text()}: say what each layer keeps: keep_heads=... and/or "
                    "keep_neurons=... (a fraction, a count or counts per layer)")
  if options["score"] not in REMOVE_SCORES:
    raise UserError(f"{step.text()}: score={options['score']!r}; use "
                    f"{' or '.join(REMOVE_SCORES)}")
  if not isinstance(options["across_layers"], bool):
    raise UserError(f"{step.text()}: across_layers={options['across_layers']!r}; use True "
                    "or False")
  counted = [k for k in ("keep_heads", "keep_neurons")
             if options[k] is not None and not isinstance(options[k], float)]
  if options["across_layers"] and counted:
    raise UserError(f"{step.text()}: across_layers=True ranks a fraction of all layers' units "
                    f"together; give {counted[0]} as a fraction (0.5), not counts")
  return options


def _refuse_before_remove(state: State, step: Step) -> None:
  """The states whose stored tensors cannot lose rows and columns unit by unit."""
  if state.rank:
    raise UserError(f"{step.text()} after svd: the low-rank factors mix every unit's "
                    "weights; put remove before svd")
  if state.bits:
    raise UserError(f"{step.text()} after quantize: put remove before quantize")
  _refuse_after_grid(state, step)
  if state.input_scales:
    raise UserError(f"{step.text()} after awq/smoothquant: their input scales belong to "
                    "the unpruned layers; put remove before them")
  if jax.process_count() > 1:
    raise UserError(f"{step.text()}: structured removal runs in one process (it slices the "
                    "weights on the host); run compress with one process")


def _activation_scores(state: State, step: Step, config, evaluator: Evaluator, log,
                       calibration: calib_lib.Calibration, calibration_cache: dict,
                       workdir: str, model_cfg) -> tuple[list, list]:
  """`structured.activation_scores` from one blockwise pass over the calibration set with
  the weights left as they are (the statistics of the model before removal)."""
  model, params, inputs, _ = _blockwise_setup(state.theta, step, config, evaluator, log,
                                              calibration, calibration_cache, workdir)
  stats: dict = {}

  def record(path, w, layer_stats):
    stats[path] = layer_stats
    return w

  output_projection = re.compile(r"block_\d+/(attn/out|mlp/fc_out)")
  calib_lib.compress_blockwise(model, params, inputs,
                               lambda path: bool(output_projection.fullmatch(path)), record,
                               calibration, log=log, mesh=evaluator.mesh, rules=evaluator.rules)
  return structured.activation_scores(params, model_cfg, stats)


def step_remove(state: State, step: Step, config, evaluator, log,
                calibration: calib_lib.Calibration, calibration_cache: dict, workdir: str,
                **_) -> State:
  """`remove(keep_heads=F, keep_neurons=F, score=magnitude|activation, across_layers=False)`:
  each layer keeps its best attention heads (whole key/value groups) and MLP units, the
  rest physically removed (`structured.prune_heads` / `prune_neurons`); the state's model
  gets the per-layer shapes."""
  options = _remove_options(step)
  _refuse_before_remove(state, step)
  model = evaluator.task.model()
  if not isinstance(model, (Transformer, EncoderWithHeads)):
    raise UserError(f"{step.text()}: task {config.task!r} builds {type(model).__name__}, not "
                    "one stack of Transformer blocks; per-layer head counts and MLP widths "
                    "are for decoders and encoders (tasks lm, classify, mlm), not an "
                    "encoder–decoder")
  cfg = model.cfg
  head_scores = neuron_scores = None
  if options["score"] == "activation":
    head_scores, neuron_scores = _activation_scores(
        state, step, config, evaluator, log, calibration, calibration_cache, workdir, cfg)
  params = state.theta
  try:
    if options["keep_heads"] is not None:
      params, cfg = structured.prune_heads(params, cfg, options["keep_heads"], head_scores,
                                           options["across_layers"])
    if options["keep_neurons"] is not None:
      params, cfg = structured.prune_neurons(params, cfg, options["keep_neurons"],
                                             neuron_scores, options["across_layers"])
  except UserError as e:  # "prune_heads: keep=…" in this step's words
    what, _, message = str(e).partition(": ")
    name = {"prune_heads": "keep_heads", "prune_neurons": "keep_neurons"}.get(what)
    raise UserError(f"{step.text()}: {name}: {message}" if name else str(e)) from None
  log(f"  {step.text()}: query heads per layer {list(cfg.heads_by_layer)}, MLP units per "
      f"layer {list(cfg.mlp_dims_by_layer)}")
  shapes = dict(state.model_shapes, layer_heads=tuple(cfg.layer_heads),
                layer_mlp_dims=tuple(cfg.layer_mlp_dims), scan_layers=bool(cfg.scan_layers))
  return dataclasses.replace(state, theta=params, model_shapes=shapes)


def step_calibration(step: Step) -> calib_lib.Calibration:
  """`calibration(n=128, length=512, seed=0, chunk=8, samples=512)`: the calibration set
  of the calibrated steps after it."""
  fields = [f.name for f in dataclasses.fields(calib_lib.Calibration)]
  if step.args:
    raise UserError(f"{step.text()}: give the options by name: {', '.join(fields)}")
  unknown = sorted(set(step.kwargs) - set(fields))
  if unknown:
    raise UserError(f"{step.text()}: unknown option {unknown[0]!r}; calibration takes "
                    f"{', '.join(fields)}")
  return calib_lib.Calibration(**{k: int(v) for k, v in step.kwargs.items()})


STEPS = {"svd": step_svd, "prune": step_prune, "quantize": step_quantize, "rtn": step_rtn,
         "remove": step_remove}


# ---------------------------------------------------------------------------
# Measuring and saving.


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def kernel_bits(state: State) -> float:
  """Bits per effective kernel entry as deployed: `bits` per stored value plus f32
  per-channel scales (int4 is counted at 4 bits although the checkpoint holds
  it in int8 containers); zeros are stored densely, so they are not free."""
  sizes: list[tuple[int, int]] = []

  def visit(w):
    sizes.append((int(np.size(w)), int(np.shape(w)[-1])))
    return w
  map_kernel_slots(state.theta, state.base_rules(), state.kernels, visit)
  stored = sum(n for n, _ in sizes)
  bits = sum(state.bits * n + 32 * c for n, c in sizes) if state.bits else 32 * stored
  if state.sparse24 and not (state.bits or state.grid or state.rank):
    bits = 17 * stored  # sparse24: half the entries as f32 values, a 2-bit index each
  if state.grid:  # codes, f32 scales and (asymmetric) 8-bit zeros per group and column
    b, group, sym = state.grid
    bits = sum(b * n + (n // c // (group or n // c)) * c * (32 + (0 if sym else 8))
               for n, c in sizes)
  rows = Reparam.from_config({"rules": state.base_rules()}).report_rows(state.theta)
  dense = sum(r["dense"] for r in rows[:-1]) if state.rank else stored
  return bits / max(dense, 1)


def measure(state: State, evaluator: Evaluator, where: str, label: str) -> dict[str, Any]:
  params = state.storage_params()
  rules = state.storage_rules()
  checkpoint.save_params(where, params)  # every process writes its own shards
  metrics = evaluator(params, rules)
  counts: list[tuple[int, int]] = []  # (entries, zeros) of each stored kernel array (W, U or V)

  def visit(w):  # counted where the array lies (possibly split over the processes)
    counts.append((int(np.size(w)), int(np.size(w) - jnp.count_nonzero(w))))
    return w
  map_kernel_slots(state.theta, state.base_rules(), state.kernels, visit)
  sp = dict(size=sum(n for n, _ in counts), zeros=sum(z for _, z in counts))
  sp["sparsity"] = sp["zeros"] / max(sp["size"], 1)
  leaves = jax.tree.leaves(params)
  return dict(step=label, rules=[list(r) for r in rules],
              stored_params=int(sum(np.size(x) for x in leaves)),
              stored_bytes=int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in leaves)),
              kernel_entries=sp["size"], kernel_zeros=sp["zeros"],
              kernel_sparsity=sp["sparsity"], bytes_on_disk=dir_bytes(where),
              kernel_bits=kernel_bits(state), **{f"eval_{k}": v for k, v in metrics.items()})


HEADLINE_METRICS = (("eval_accuracy", "accuracy"), ("eval_perplexity", "val ppl"),
                    ("eval_mlm_perplexity", "MLM ppl"))


def format_table(rows: list[dict[str, Any]]) -> str:
  """One line per step; the task's headline metric: accuracy (classifiers), perplexity (LM)
  or masked-token perplexity (MLM pre-training)."""
  metric, label = next(((k, name) for k, name in HEADLINE_METRICS if k in rows[0]),
                       ("eval_loss", "val loss"))
  head = ("| step | stored params | stored bytes | kernel sparsity | kernel bits/w | "
          f"bytes on disk | val loss | Δ loss | {label} |")
  lines = [head, "|" + "---|" * 9]
  base = rows[0]["eval_loss"]
  for r in rows:
    lines.append(f"| {r['step']} | {r['stored_params']:,} | {r['stored_bytes']:,} | "
                 f"{r['kernel_sparsity']:.3f} | {r['kernel_bits']:.2f} | "
                 f"{r['bytes_on_disk']:,} | {r['eval_loss']:.4f} | "
                 f"{r['eval_loss'] - base:+.4f} | {r[metric]:.4f} |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Fine-tuning with the real trainer.


def make_finetuner(config, source: str, out: str, steps: int, lr: float, log):
  """`finetune(state, name)`: the real training loop on the state's float weights."""

  def finetune(state: State, name: str) -> State:
    if state.grid:
      raise UserError(f"--finetune_steps after {state.grid_step}: fine-tuning the float "
                      "weights would move them off the grid; fine-tune before it")
    folder = os.path.join(out, "finetune", name)
    os.makedirs(folder, exist_ok=True)
    init = os.path.join(folder, "init_params")
    checkpoint.save_params(init, state.train_params())
    if tokenizers.has_tokenizer(source) and jax.process_index() == 0:
      tokenizers.load_tokenizer(source).save(init)  # its token ids are in the weights
    cfg = ml_collections.ConfigDict(state.model_config(config).to_dict())  # pruned shapes
    cfg.reparam.rules = state.train_rules()
    cfg.init_from = init
    cfg.num_steps = steps
    cfg.optimizer.lr = lr
    cfg.optimizer.end_lr = lr / 10
    cfg.optimizer.warmup_steps = min(10, steps)
    cfg.eval_every = cfg.checkpoint_every = steps
    cfg.log_every = min(cfg.log_every, steps)
    workdir = os.path.join(folder, "run")
    log(f"  fine-tuning {steps} steps in {workdir} (its config.json holds the config)")
    final = train_and_evaluate(cfg, workdir)
    log(f"  fine-tuned: eval/loss {final.get('eval/loss', float('nan')):.4f}")
    tuned = checkpoint.load_params(workdir)
    theta = unwrap_train_params(tuned, state)
    if state.sparse:  # hold the pruned entries at exactly zero (the mask kept them out)
      theta = jax.tree.map(lambda new, old: jnp.where(old != 0, new, 0.0), theta, state.theta)
    return dataclasses.replace(state, theta=theta)

  return finetune


def unwrap_train_params(tuned: PyTree, state: State) -> PyTree:
  n_wraps = sum([bool(state.bits and not state.rank), state.sparse])

  def unwrap(x):
    for _ in range(n_wraps):
      x = x["w"]
    return x
  if not n_wraps:
    return tuned
  pattern = re.compile(state.kernels)
  if state.rank:
    plan = Plan.from_config({"rules": state.train_rules()})
    return map_theta(plan, tuned, lambda p, r, t: t if r is None else
                     {k: unwrap(v) for k, v in t.items()})

  def rec(tree, path):
    if isinstance(tree, dict) and not pattern.fullmatch(path):
      return {k: rec(v, f"{path}/{k}" if path else k) for k, v in tree.items()}
    return unwrap(tree) if pattern.fullmatch(path) else tree
  return rec(tuned, "")


# ---------------------------------------------------------------------------


def compress(workdir: str, recipe: str, out: str, finetune_steps: int = 0,
             finetune_lr: float = 3e-4, kernels: str = KERNELS, log=print) -> dict[str, Any]:
  """Runs the recipe; returns the report (also written to `out`)."""
  steps = parse_recipe(recipe)
  run = load_run(workdir)
  config = run.config
  params = meta.unbox(run.params)
  if config.model.get("causal") is None:
    # Written by a run started from a pretrained model before `resolve` made causal
    # concrete (262dcdb and earlier): the fine-tuning run below starts from bare params.
    with config.unlocked():
      config.model.causal = tasks.task_class(config).CAUSAL_LM
  if config.reparam.get("rules"):
    # Start from the effective dense model (masks of a pruned run applied).
    params = Reparam.from_config(config.reparam).to_dense(params, run.masks)
  with config.unlocked():
    config.reparam = ml_collections.ConfigDict({"rules": ()})
  os.makedirs(out, exist_ok=True)
  evaluators: dict[str, Evaluator] = {}

  def evaluator_of(state: State) -> Evaluator:
    """An Evaluator of the state's model: the run's, or the shapes `remove` left."""
    key = json.dumps(state.model_shapes, sort_keys=True)
    if key not in evaluators:
      evaluators[key] = Evaluator(state.model_config(config), workdir)
    return evaluators[key]

  finetune = make_finetuner(config, workdir, out, finetune_steps, finetune_lr, log) \
      if finetune_steps > 0 else None
  state = State(theta=params, kernels=kernels)
  rows = [measure(state, evaluator_of(state), os.path.join(out, "steps", "0_original"),
                  "original")]
  log(f"original: eval loss {rows[0]['eval_loss']:.4f}, {rows[0]['bytes_on_disk']:,} bytes")
  calibration, calibration_cache = calib_lib.Calibration(), {}
  for i, step in enumerate(steps, 1):
    if step.name == "calibration":  # options of the steps after it, not a step of its own
      calibration = step_calibration(step)
      continue
    run_step = STEPS.get(step.name, step_calibrated)
    state = run_step(state, Step(step.name, step.args, dict(step.kwargs)),
                     config=state.model_config(config), evaluator=evaluator_of(state),
                     finetune=finetune, log=log, calibration=calibration,
                     calibration_cache=calibration_cache, workdir=workdir)
    if state.sparse and not state.rank:
      state = dataclasses.replace(state, sparse24=all_2_of_4(state.theta, state.kernels))
    rows.append(measure(state, evaluator_of(state),
                        os.path.join(out, "steps", f"{i}_{step.name}"), step.text()))
    log(f"{step.text()}: eval loss {rows[-1]['eval_loss']:.4f}, "
        f"sparsity {rows[-1]['kernel_sparsity']:.3f}, {rows[-1]['bytes_on_disk']:,} bytes")
  if finetune is not None:
    state = finetune(state, "final")
    rows.append(measure(state, evaluator_of(state),
                        os.path.join(out, "steps", f"{len(steps) + 1}_finetune"),
                        f"finetune({finetune_steps} steps)"))
    log(f"finetuned: eval loss {rows[-1]['eval_loss']:.4f}")
  final_dir = rundir.path(out, rundir.PARAMS)
  if os.path.exists(final_dir) and jax.process_index() == 0:
    shutil.rmtree(final_dir)
  sync("reparam_jax:compress")
  checkpoint.save_params(final_dir, state.storage_params())
  config = state.model_config(config)  # a removed unit's shapes: load_run builds the smaller model
  with config.unlocked():
    config.reparam.rules = state.storage_rules()
  report = dict(workdir=workdir, recipe=recipe, finetune_steps=finetune_steps, rows=rows,
                final=dict(rows[-1], bytes_on_disk=dir_bytes(final_dir)))
  if jax.process_index() != 0:  # the files below are one copy, written by process 0
    return report
  rundir.write_config(out, config)
  if tokenizers.has_tokenizer(workdir):  # sample, export_hf and init_from read it from `out`
    tokenizers.load_tokenizer(workdir).save(out)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  table = format_table(rows)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(f"# compress {workdir}\n\nrecipe: `{recipe}`, fine-tuning steps: {finetune_steps}\n\n"
            f"{table}\n")
  log(table)
  return report
