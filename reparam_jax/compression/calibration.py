"""Calibration for the one-shot methods (methods/): sequences from the run's training
data, run through the model block by block, each selected linear layer's input
statistics accumulated into a `LayerStats`, the layer compressed, the block recomputed.

The procedure is GPTQ's and SparseGPT's (Frantar et al. 2023; Frantar & Alistarh 2023):

1. The inputs of the first block are computed once for the N calibration sequences.
2. For each block in order: its inputs run through it once with the block's weights as
   they are; every selected `Dense` inside records Σxᵀx, max |x|, Σ|x| and a seeded row
   sample of its input (chunks of `chunk` sequences, summed in float64 on the host, so
   memory holds one block's activations and the Hessians).  Layers that read the same
   input (query, key and value) share one statistic.  All of the block's layers are then
   compressed from those statistics (the reference implementations' default order, not
   "true sequential"), and the block's output is recomputed with the compressed weights:
   the next block's input.

No model code knows about this: the blocks are found and their layers' inputs read with
`flax.linen.intercept_methods` on the project's `Block` and `Dense` modules, and each
block is applied alone (its module cloned unbound) in jitted functions.  The model must
be unrolled (`block_{i}`); the recipe unstacks a scanned stack first.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reparam_jax.compression.methods import LayerStats
from reparam_jax.errors import UserError
from reparam_jax.models.block import Block
from reparam_jax.models.layers import Dense
from reparam_jax.reparam.state import get_in, set_in

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


def calibration_inputs(config: ml_collections.ConfigDict, workdir: str | None,
                       calib: Calibration, max_len: int, log=print) -> dict[str, np.ndarray]:
  """The model inputs of the calibration set: `ids_BxL` (and packed rows' segment ids
  and positions), read from the run's training data with the task's own loader."""
  from reparam_jax import tasks  # the task registry imports the models: import here
  from reparam_jax.tasks.lm import packed_inputs
  cls = tasks.task_class(config)
  if not getattr(cls, "CAUSAL_LM", False):
    raise UserError(f"calibration reads a language model's training data; task "
                    f"{config.task!r} is not supported (use an lm run)")
  length = min(int(calib.length), int(max_len))
  if length < calib.length:
    log(f"  calibration: length {calib.length} > the model's max_len {max_len}; "
        f"using {length}")
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.batch_size, cfg.seq_len, cfg.seed = int(calib.n), length, int(calib.seed)
  batch = next(iter(cls(cfg, workdir).train_iterator()))
  inputs = {"ids_BxL": np.asarray(batch["tokens"])[:, :length]}
  inputs.update({k: np.asarray(v)[:, :length] for k, v in packed_inputs(batch).items()})
  return inputs


@dataclasses.dataclass
class _BlockCall:
  """The blocks of a model and what the first one is called with."""

  modules: list           # unbound clones of block_0 ... block_{L-1}
  paths: list             # their module paths (where their params lie)
  static: Any             # the call's treedef and non-array leaves
  arrays: list            # the call's array leaves, per chunk, on the host


def _find_blocks(model: nn.Module, params: PyTree, inputs: dict, chunk: int) -> _BlockCall:
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

  def first_inputs(params, ids, kwargs):
    with nn.intercept_methods(interceptor):
      model.apply({"params": params}, ids, train=False, **kwargs)
    return found["first_arrays"]

  fn = jax.jit(first_inputs)
  ids = inputs["ids_BxL"]
  arrays = []
  for start in range(0, len(ids), chunk):
    rows = slice(start, start + chunk)
    arrays.append([np.asarray(a) for a in fn(params, ids[rows],
                                             {k: v[rows] for k, v in inputs.items()
                                              if k != "ids_BxL"})])
    found.pop("first_arrays", None)
  paths = sorted((p for p in found if isinstance(p, tuple)),
                 key=lambda p: int(p[-1].split("_")[1]))
  if not paths:
    raise UserError("calibration found no transformer blocks (block_{i}) in the model")
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


def _stats_fn(module: nn.Module, static):
  """(jit: (block params, call arrays, sampled row indices) → [Σxᵀx, max|x|, Σ|x|] and the
  sampled rows of each distinct input of the block's Dense layers, {layer path: input
  index} filled when it traces).  Every layer's: one function serves all alike blocks,
  whichever of their layers are selected, so it compiles once."""
  layout: dict = {}

  def fn(params, arrays, sample_rows):
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
    sums = [(x.T @ x, jnp.abs(x).max(0), jnp.abs(x).sum(0)) for x in inputs]
    return sums, [x[sample_rows] for x in inputs]

  return jax.jit(fn), layout


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


def compress_blockwise(model: nn.Module, params: PyTree, inputs: dict[str, np.ndarray],
                       selected: Callable[[str], bool],
                       compress_layer: Callable[[str, np.ndarray, LayerStats], np.ndarray],
                       calib: Calibration = Calibration(), log=print,
                       compress_shared: Callable[[list, list, LayerStats], list] | None = None
                       ) -> PyTree:
  """`params` with every selected kernel `compress_layer(path, w_IxO, stats)`, block by
  block on the calibration `inputs` (module docstring).

  `selected(path)` is asked of each Dense's module path (`block_3/attn/query`); the
  kernel is its `kernel` parameter.  With `compress_shared(paths, ws, stats)` → new ws,
  the layers that read one input (query, key, value) are compressed in one call (AWQ's
  and SmoothQuant's shared scale).
  """
  chunk = int(calib.chunk)
  total_rows = int(np.prod(inputs["ids_BxL"].shape))
  blocks = _find_blocks(model, params, inputs, chunk)
  arrays = blocks.arrays
  rng = np.random.default_rng(calib.seed)
  compiled: dict = {}  # alike blocks (same module fields) share their jitted functions
  for module, path in zip(blocks.modules, blocks.paths):
    prefix = "/".join(path)
    block_params = get_in(params, path)
    if repr(module) not in compiled:
      compiled[repr(module)] = (*_stats_fn(module, blocks.static), jax.jit(
          lambda p, a, m=module: _call(m, blocks.static, p, a)))
    fn, layout, forward = compiled[repr(module)]
    accumulators: list = []
    for call_arrays in arrays:
      count = int(np.prod(call_arrays[0].shape[:-1]))  # this chunk's tokens
      k = min(count, -(-int(calib.samples) * count // total_rows))
      sample_rows = np.sort(rng.choice(count, k, replace=False)).astype(np.int32)
      sums, rows = fn(block_params, call_arrays, sample_rows)
      if not accumulators:
        accumulators = [_Accumulator(r.shape[-1], calib.samples) for r in rows]
      for acc, (xtx, amax, asum), r in zip(accumulators, sums, rows):
        acc.add(xtx, amax, asum, r, count)
    stats = [a.stats() for a in accumulators]
    chosen = {k: v for k, v in layout.items() if selected(f"{prefix}/{k}")}
    for index in sorted(set(chosen.values())):
      layers = sorted(k for k, v in chosen.items() if v == index)
      kernel_paths = [tuple(layer.split("/")) + ("kernel",) for layer in layers]
      ws = [np.asarray(get_in(block_params, k), np.float32) for k in kernel_paths]
      names = [f"{prefix}/{layer}/kernel" for layer in layers]
      if compress_shared is not None:
        news = compress_shared(names, ws, stats[index])
      else:
        news = [compress_layer(n, w, stats[index]) for n, w in zip(names, ws)]
      for k, new in zip(kernel_paths, news):
        block_params = set_in(block_params, k,
                                jnp.asarray(new, get_in(block_params, k).dtype))
    params = set_in(params, path, block_params)
    arrays = [[np.asarray(forward(block_params, a))] + a[1:] for a in arrays]
    log(f"  calibrated {prefix}: {len(chosen)} layers")
  return params
