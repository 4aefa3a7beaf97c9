"""Calibration for the one-shot methods (methods/): sequences from the run's training
data, run through the model block by block, each selected linear layer's input
statistics accumulated into a `LayerStats`, the layer compressed, the block recomputed.

The procedure is GPTQ's and SparseGPT's (Frantar et al. 2023; Frantar & Alistarh 2023):

1. The inputs of the first block are computed once for the N calibration sequences.
2. For each block in order: its inputs run through it once with the block's weights as
   they are; every selected `Dense` inside records Σxᵀx, max |x|, Σ|x| and a seeded row
   sample of its input (chunks of `chunk` sequences, each chunk's sums reduced over the
   mesh and added in float64 on the host, so memory holds one block's activations and the
   Hessians).  Layers that read the same input (query, key and value) share one
   statistic.  All of the block's layers are then compressed from those statistics (the
   reference implementations' default order, not "true sequential"), and the block's
   output is recomputed with the compressed weights: the next block's input.

On a device mesh (the run's: `data × fsdp × tensor`, training/sharding.py) the
parameters keep the trainer's shardings (FSDP/tensor splits of the rules table), each
chunk of activations is split over the mesh's batch axes, and the jitted functions run
under the mesh.  The only weights that come to the host are one layer's kernel at a time
(the methods are NumPy), which goes back with its own sharding.

No model code knows about this: the blocks are found and their layers' inputs read with
`flax.linen.intercept_methods` on the project's `Block` and `Dense` modules, and each
block is applied alone (its module cloned unbound) in jitted functions.  The model must
be unrolled (`block_{i}`, one stack of them); the recipe unstacks a scanned stack first.
Any task's model works: the calibration set is the model's inputs as the task's own
`eval_sums` passes them (`calibration_inputs`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reparam_jax.compression.methods import LayerStats
from reparam_jax.config.base import DEFAULT_AXIS_RULES
from reparam_jax.errors import UserError
from reparam_jax.models.block import Block
from reparam_jax.models.layers import Dense
from reparam_jax.reparam.state import get_in, set_in
from reparam_jax.rundir import sharded
from reparam_jax.training import sharding

PyTree = Any
_BLOCK_NAME = re.compile(r"block_\d+")
_ARRAY = object()  # where a block call's array argument goes


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The calibration set: `n` sequences of `length` tokens, drawn with `seed`; `chunk`
  sequences per forward pass; `samples` input rows kept per layer (for AWQ's search)."""

  n: int = 128
  length: int = 512
  seed: int = 0
  chunk: int = 8
  samples: int = 512

  def __post_init__(self):
    for name in ("n", "length", "chunk"):
      if int(getattr(self, name)) < 1:
        raise UserError(f"calibration({name}={getattr(self, name)}): must be ≥ 1")


@dataclasses.dataclass
class CalibrationSet:
  """The calibration sequences as the model reads them: `model.apply(params, *args,
  train=False, **kwargs)`, every array `[rows, ...]` (None arguments stay None).
  `token_mask_BxL` is 1 where a position holds a real token (padding is left out of the
  statistics); None: every position counts."""

  args: tuple
  kwargs: dict
  token_mask_BxL: np.ndarray | None = None

  @classmethod
  def of(cls, inputs: CalibrationSet | dict[str, np.ndarray]) -> CalibrationSet:
    """A `CalibrationSet`, or a decoder's `{'ids_BxL': …, other keyword inputs}`."""
    if isinstance(inputs, CalibrationSet):
      return inputs
    return cls((inputs["ids_BxL"],), {k: v for k, v in inputs.items() if k != "ids_BxL"})

  @property
  def shape(self) -> tuple[int, int]:
    """(sequences, length) of the first argument (the token ids)."""
    return tuple(np.shape(self.args[0])[:2])

  def rows(self, rows: slice) -> CalibrationSet:
    n = self.shape[0]
    cut = lambda x: x[rows] if np.ndim(x) and np.shape(x)[0] == n else x  # noqa: E731
    return CalibrationSet(jax.tree.map(cut, self.args), jax.tree.map(cut, self.kwargs),
                          None if self.token_mask_BxL is None else self.token_mask_BxL[rows])


class _ModelCalled(Exception):
  """Raised by `calibration_inputs`'s stand-in for the model once it has its inputs."""


def calibration_inputs(config: ml_collections.ConfigDict, workdir: str | None,
                       calib: Calibration, max_len: int, log=print) -> CalibrationSet:
  """The model inputs of the calibration set: the first batch of the task's own training
  loader (batch_size=n, seq_len=length, seed), given to the model as the task's
  `eval_sums` gives it (a decoder's token ids and packed rows' segment ids and
  positions; an encoder's ids, padding mask and token types).  The batch's
  `padding_mask`, where it has one, marks the positions whose statistics count."""
  from reparam_jax import tasks  # the task registry imports the models: import here
  cls = tasks.task_class(config)
  length = min(int(calib.length), int(max_len))
  if length < calib.length:
    log(f"  calibration: length {calib.length} > the model's max_len {max_len}; "
        f"using {length}")
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.batch_size, cfg.seq_len, cfg.seed = int(calib.n), length, int(calib.seed)
  task = cls(cfg, workdir)
  batch = {k: np.asarray(v) for k, v in next(iter(task.train_iterator())).items()}
  called: dict = {}

  def model_stand_in(*args, train: bool, **kwargs):
    called.update(args=args, kwargs=kwargs)
    raise _ModelCalled  # the task's loss on the outputs is not needed

  try:
    task.eval_sums(model_stand_in, batch)
  except _ModelCalled:
    pass
  if not called:
    raise UserError(f"calibration: task {config.task!r} did not call its model on a batch")
  as_host = lambda x: None if x is None else np.asarray(x)  # noqa: E731
  mask = batch.get("padding_mask")
  return CalibrationSet(tuple(as_host(a) for a in called["args"]),
                        {k: as_host(v) for k, v in called["kwargs"].items()},
                        None if mask is None else mask.astype(bool))


# ---------------------------------------------------------------------------
# Placement on the mesh.


def one_device_mesh() -> Mesh:
  """The mesh of a calibration given none: the default device alone."""
  return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def rows_sharding(shape: tuple[int, ...], mesh: Mesh, rules: Any) -> NamedSharding:
  """An activation `[rows, ...]` split over the mesh's batch axes (the rules table's
  `batch`), replicated where they do not divide its rows (a [1, L] position row)."""
  if not shape:
    return NamedSharding(mesh, PartitionSpec())
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (len(shape) - 1), rules)
  return NamedSharding(mesh, sharding.divisible_spec(spec, shape, mesh))


def _place_rows(tree: PyTree, mesh: Mesh, rules: Any) -> PyTree:
  """Host arrays (this process's rows) → global arrays split over the batch axes."""
  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:] if x.ndim else ()
    return jax.make_array_from_process_local_data(rows_sharding(global_shape, mesh, rules), x,
                                                  global_shape)
  return jax.tree.map(put, tree)


def _split_rows(x: jax.Array, mesh: Mesh, rules: Any) -> jax.Array:
  """Inside a jitted function: `x` split over the batch axes."""
  return jax.lax.with_sharding_constraint(x, rows_sharding(tuple(x.shape), mesh, rules))


def param_shardings(model: nn.Module, inputs: CalibrationSet, mesh: Mesh, rules: Any) -> PyTree:
  """The trainer's parameter shardings of `model` on `mesh` (training/sharding.py), from
  its abstract initialisation on one calibration row (no compute)."""
  one = inputs.rows(slice(0, 1))
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *one.args,
                                               train=False, **one.kwargs))
  return sharding.logical_to_sharding(abstract, mesh, rules)["params"]


def _host_copy(kernel: jax.Array) -> np.ndarray:
  """One kernel whole on this host, float32 (the methods are NumPy): the only weights
  that leave the devices."""
  if isinstance(kernel, jax.Array) and not kernel.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(kernel, tiled=True), np.float32)
  return np.asarray(jax.device_get(kernel), np.float32)


# ---------------------------------------------------------------------------
# The blocks and their statistics.


@dataclasses.dataclass
class _BlockCall:
  """The blocks of a model and what the first one is called with."""

  modules: list           # unbound clones of block_0 ... block_{L-1}
  paths: list             # their module paths (where their params lie)
  static: Any             # the call's treedef and non-array leaves
  arrays: list            # the call's array leaves, per chunk, split over the batch axes


def _find_blocks(model: nn.Module, params: PyTree, inputs: CalibrationSet, chunk: int,
                 mesh: Mesh, rules: Any) -> _BlockCall:
  found: dict = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and isinstance(module, Block)
        and _BLOCK_NAME.fullmatch(str(module.name or ""))):
      found.setdefault(module.path, module.clone(parent=None, name=None))
      if "first_arrays" not in found:  # the first block of this trace
        leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=lambda x: x is None)
        is_array = [isinstance(x, jax.Array) for x in leaves]
        found["first"] = (treedef, [_ARRAY if a else x for a, x in zip(is_array, leaves)])
        found["first_arrays"] = [x for a, x in zip(is_array, leaves) if a]
      return args[0]  # the blocks' work is not needed here
    return next_fun(*args, **kwargs)

  def first_inputs(params, args, kwargs):
    with nn.intercept_methods(interceptor):
      model.apply({"params": params}, *args, train=False, **kwargs)
    return [_split_rows(a, mesh, rules) for a in found["first_arrays"]]

  fn = jax.jit(first_inputs)
  arrays = []
  for start in range(0, inputs.shape[0], chunk):
    rows = inputs.rows(slice(start, start + chunk))
    arrays.append(fn(params, _place_rows(rows.args, mesh, rules),
                     _place_rows(rows.kwargs, mesh, rules)))
    found.pop("first_arrays", None)
  paths = sorted((p for p in found if isinstance(p, tuple)),
                 key=lambda p: int(p[-1].split("_")[1]))
  if not paths:
    raise UserError("calibration found no transformer blocks (block_{i}) in the model")
  stacks = sorted({"/".join(p[:-1]) or "(top level)" for p in paths})
  if len(stacks) > 1:
    raise UserError(f"calibration runs one stack of blocks; this model has {len(stacks)} "
                    f"({', '.join(stacks)}): an encoder–decoder is not supported")
  return _BlockCall([found[p] for p in paths], paths, found["first"], arrays)


def _call(module: nn.Module, static, params: PyTree, arrays: list, intercept=None):
  treedef, leaves = static
  it = iter(arrays)
  leaves = [next(it) if x is _ARRAY else x for x in leaves]
  args, kwargs = jax.tree.unflatten(treedef, leaves)
  if intercept is None:
    return module.apply({"params": params}, *args, **kwargs)
  with nn.intercept_methods(intercept):
    return module.apply({"params": params}, *args, **kwargs)


def _stats_fn(module: nn.Module, static, mesh: Mesh):
  """(jit: (block params, call arrays, sampled row indices, token mask or None) →
  [Σxᵀx, max|x|, Σ|x|] and the sampled rows of each distinct input of the block's Dense
  layers, replicated (reduced over the mesh), {layer path: input index} filled when it
  traces).  Every layer's: one function serves all alike blocks, whichever of their
  layers are selected, so it compiles once."""
  layout: dict = {}

  def fn(params, arrays, sample_rows, mask_R):
    inputs: list = []
    owners: dict = {}

    def interceptor(next_fun, args, kwargs, context):
      m = context.module
      path = "/".join(m.path)
      if context.method_name == "__call__" and isinstance(m, Dense):
        x = args[0]
        if id(x) not in owners:  # query, key and value read one array
          owners[id(x)] = len(inputs)
          inputs.append(x.reshape(-1, x.shape[-1]).astype(jnp.float32))
        layout[path] = owners[id(x)]
      return next_fun(*args, **kwargs)

    _call(module, static, params, arrays, interceptor)

    def sums(x):
      if mask_R is None or x.shape[0] != mask_R.shape[0]:
        return x.T @ x, jnp.abs(x).max(0), jnp.abs(x).sum(0)
      kept = jnp.abs(x) * mask_R[:, None]  # padding rows count as zeros
      return (x * mask_R[:, None]).T @ x, kept.max(0), kept.sum(0)
    return [sums(x) for x in inputs], [x[sample_rows] for x in inputs]

  return jax.jit(fn, out_shardings=sharding.replicated(mesh)), layout


class _Accumulator:
  def __init__(self, width: int, samples: int):
    self.hessian = np.zeros((width, width), np.float64)
    self.abs_max = np.zeros(width, np.float64)
    self.abs_sum = np.zeros(width, np.float64)
    self.count = 0
    self.rows: list = []
    self.samples = samples

  def add(self, xtx, abs_max, abs_sum, sampled_rows, count):
    self.hessian += np.asarray(xtx, np.float64)
    self.abs_max = np.maximum(self.abs_max, np.asarray(abs_max, np.float64))
    self.abs_sum += np.asarray(abs_sum, np.float64)
    self.count += count
    self.rows.append(np.asarray(sampled_rows))

  def stats(self) -> LayerStats:
    samples = np.concatenate(self.rows)[:self.samples] if self.rows else \
        np.zeros((0, len(self.abs_max)), np.float32)
    return LayerStats(self.hessian, self.count, self.abs_max.astype(np.float32),
                      (self.abs_sum / max(self.count, 1)).astype(np.float32), samples)


def _chunk_masks(inputs: CalibrationSet, chunk: int) -> list:
  """Each chunk's token mask, flat over its rows × positions (None: all count)."""
  if inputs.token_mask_BxL is None:
    return [None] * math.ceil(inputs.shape[0] / chunk)
  mask = inputs.token_mask_BxL
  if jax.process_count() > 1:  # a global chunk holds every process's rows of it, in order
    every = np.asarray(multihost_utils.process_allgather(mask, tiled=False))  # [P, rows, L]
    return [every[:, s:s + chunk].reshape(-1) for s in range(0, len(mask), chunk)]
  return [mask[s:s + chunk].reshape(-1) for s in range(0, len(mask), chunk)]


def compress_blockwise(model: nn.Module, params: PyTree,
                       inputs: CalibrationSet | dict[str, np.ndarray],
                       selected: Callable[[str], bool],
                       compress_layer: Callable[[str, np.ndarray, LayerStats], np.ndarray],
                       calib: Calibration = Calibration(), log=print,
                       compress_shared: Callable[[list, list, LayerStats], list] | None = None,
                       mesh: Mesh | None = None, rules: Any = None) -> PyTree:
  """`params` with every selected kernel `compress_layer(path, w_IxO, stats)`, block by
  block on the calibration `inputs` (module docstring).

  `selected(path)` is asked of each Dense's module path (`block_3/attn/query`); the
  kernel is its `kernel` parameter.  With `compress_shared(paths, ws, stats)` → new ws,
  the layers that read one input (query, key, value) are compressed in one call (AWQ's
  and SmoothQuant's shared scale).  `mesh` (default: the default device alone) and its
  `rules` table (default: config/base.py's) place the parameters and activations; the
  returned params keep the trainer's shardings on that mesh.
  """
  inputs = CalibrationSet.of(inputs)
  mesh = one_device_mesh() if mesh is None else mesh
  rules = sharding.rules_tuple(DEFAULT_AXIS_RULES if rules is None else rules)
  chunk = int(calib.chunk)
  shardings = param_shardings(model, inputs, mesh, rules)
  if jax.tree.structure(params) != jax.tree.structure(shardings):
    raise ValueError("calibration: the params do not have the model's structure "
                     f"({jax.tree.structure(params)} vs {jax.tree.structure(shardings)})")
  params = jax.tree.map(sharded.reshard, params, shardings)
  masks = _chunk_masks(inputs, chunk)
  total_rows = int(np.prod(inputs.shape)) * jax.process_count() \
      if inputs.token_mask_BxL is None else int(sum(m.sum() for m in masks))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    blocks = _find_blocks(model, params, inputs, chunk, mesh, rules)
    arrays = blocks.arrays
    mask_arrays = [None if m is None else jax.device_put(
        m.astype(np.float32), rows_sharding(m.shape, mesh, rules)) for m in masks]
    rng = np.random.default_rng(calib.seed)
    compiled: dict = {}  # alike blocks (same module fields) share their jitted functions
    for module, path in zip(blocks.modules, blocks.paths):
      prefix = "/".join(path)
      block_params = get_in(params, path)
      if repr(module) not in compiled:
        compiled[repr(module)] = (*_stats_fn(module, blocks.static, mesh), jax.jit(
            lambda p, a, m=module: _split_rows(_call(m, blocks.static, p, a), mesh, rules)))
      fn, layout, forward = compiled[repr(module)]
      accumulators: list = []
      for call_arrays, mask, mask_array in zip(arrays, masks, mask_arrays):
        if mask is None:
          count = int(np.prod(call_arrays[0].shape[:-1]))  # this chunk's tokens
          k = min(count, -(-int(calib.samples) * count // total_rows))
          sample_rows = np.sort(rng.choice(count, k, replace=False)).astype(np.int32)
        else:  # the sample is drawn from the real tokens' rows
          real = np.flatnonzero(mask)
          count = len(real)
          k = min(count, -(-int(calib.samples) * count // max(total_rows, 1)))
          sample_rows = np.sort(rng.choice(real, k, replace=False)).astype(np.int32)
        sums, rows = jax.device_get(fn(block_params, call_arrays, sample_rows, mask_array))
        if not accumulators:
          accumulators = [_Accumulator(r.shape[-1], calib.samples) for r in rows]
        for acc, (xtx, amax, asum), r in zip(accumulators, sums, rows):
          acc.add(xtx, amax, asum, r, count)
      stats = [a.stats() for a in accumulators]
      chosen = {k: v for k, v in layout.items() if selected(f"{prefix}/{k}")}
      for index in sorted(set(chosen.values())):
        layers = sorted(k for k, v in chosen.items() if v == index)
        kernel_paths = [tuple(layer.split("/")) + ("kernel",) for layer in layers]
        ws = [_host_copy(get_in(block_params, k)) for k in kernel_paths]
        names = [f"{prefix}/{layer}/kernel" for layer in layers]
        if compress_shared is not None:
          news = compress_shared(names, ws, stats[index])
        else:
          news = [compress_layer(n, w, stats[index]) for n, w in zip(names, ws)]
        for k, new in zip(kernel_paths, news):
          old = get_in(block_params, k)  # back with its own sharding: never whole on one device
          block_params = set_in(block_params, k,
                                jax.device_put(np.asarray(new, old.dtype), old.sharding))
      params = set_in(params, path, block_params)
      arrays = [[forward(block_params, a)] + a[1:] for a in arrays]
      log(f"  calibrated {prefix}: {len(chosen)} layers")
  return params
