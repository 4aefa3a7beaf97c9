"""The layer stack: `num_layers` blocks, unrolled or scanned, rematerialised or not.

* `model.scan_layers=False`: `block_0 ... block_{L-1}`, one subtree each; the
  compiled program holds L copies of the block, so compile time grows with depth.
* `model.scan_layers=True`: one `blocks` subtree whose leaves are stacked on a
  leading `layers` axis and an `nn.scan` over it (MaxText, big_vision): the
  block is traced and compiled once.  pytree/layers.py converts checkpoints
  between the two layouts; rules name layers by their unrolled paths.
  `model.scan_unroll` layers run per loop iteration (nn.scan's `unroll`; same
  parameters, ceil(L / scan_unroll) iterations).
* `model.remat`: what the backward pass may keep of each block's forward
  (`REMAT_POLICIES`); `full` keeps only the block's inputs.  A scanned stack
  without remat keeps the matmul outputs only (`SCANNED_REMAT_POLICIES`): what
  its backward loop reads must be stacked through the loop, which costs more
  than recomputing the rest.
* `layer_transform(cls, stacked)`: a class transform applied to the block
  class before remat and scan.  The reparameterization passes one that
  computes each layer's effective weights inside the layer (reparam/intercept.py),
  so under remat they are recomputed in the backward pass instead of living
  through the step.  Where it treats layers differently, the scanned stack is
  cut into runs of alike layers (`blocks_0`, `blocks_3`, ...: one scan each).
  The model never learns which transform it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from reparam_jax.pytree.layers import LAYER_AXIS, layer_name, stack_name

Array = jax.Array
# (block class, stacked depth or 0) → class.  It may also have `runs(layer_paths) ->
# first layers`: given every layer's parameter paths, where a scanned stack must be
# cut into runs that the transform treats alike (a rule selecting `block_3` alone).
LayerTransform = Callable[[type, int], type]

# model.remat → what the backward pass may keep of a block's forward activations.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no remat: everything the backward needs is kept
    "full": jax.checkpoint_policies.nothing_saveable,  # keep the block's inputs only
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight-like dots
}
# What a scanned stack uses instead (docs/performance.md, "Scanned against unrolled"):
# without remat the scan would stack every intermediate through its loop; keeping the
# matmul outputs only made the scanned quick-start step as fast as the unrolled one.
SCANNED_REMAT_POLICIES = {"none": "dots"}


def remat_policy_name(value: Any) -> str:
  """`model.remat` as a policy name: True → 'full', False → 'none' (older configs)."""
  if value is True or value == "True":  # a bool, or a bool typed on the command line
    return "full"
  if value is False or value is None or value == "False":
    return "none"
  if value not in REMAT_POLICIES:
    raise ValueError(f"model.remat={value!r}: use one of {', '.join(REMAT_POLICIES)}")
  return str(value)


def rematerialised(block_cls: type, cfg: Any, decode: bool) -> type:
  """An unrolled block class under `cfg.remat`'s policy (none while decoding: it never
  differentiates); `train` and `decode`, arguments 4 and 5 counting self, are static."""
  policy = remat_policy_name(cfg.remat)
  if policy == "none" or decode:
    return block_cls
  return nn.remat(block_cls, policy=REMAT_POLICIES[policy], static_argnums=(4, 5))


def run_blocks(blocks: tuple[type, type], cfg: Any, num_layers: int, x: Array,
               mask: Array | None, positions: Array, train: bool, decode: bool,
               cache_index: Array | None = None, bias: Array | None = None,
               memory: Array | None = None, memory_mask: Array | None = None, *,
               cross: bool = False, layer_transform: LayerTransform | None = None,
               owner_path: tuple[str, ...] = (),
               block_configs: Sequence[Any] | None = None) -> Array:
  """Applies `num_layers` blocks of `cfg` to x; called inside the owner's compact method.

  `blocks`: the block class and its scan (carry) form, `(Block, ScannedBlock)`
  of block.py: (x, mask, positions, cache_index, bias, memory,
  memory_mask) → (x, None), with `train` and `decode` as fields.
  `owner_path`: the calling module's path (its layers are `{owner_path}/block_{i}`).
  `block_configs`: one config per layer where layers differ in heads or MLP width
  (a structurally pruned model); a scanned stack has them all equal.
  """
  block_cls, scanned_cls = blocks
  if block_configs is not None and cfg.scan_layers:
    cfg = block_configs[0]  # TransformerConfig checks they are alike when scanned
  policy = remat_policy_name(cfg.remat)
  if cfg.scan_layers:
    starts = [0]
    if getattr(layer_transform, "runs", None) is not None and num_layers > 1:
      # The transform may treat some layers differently: scan each run of alike layers.
      rel = _param_paths(block_cls, cfg, cross, x, positions, memory)
      owner = "/".join(str(p) for p in owner_path)
      starts = layer_transform.runs(
          [[f"{owner}/{layer_name(i)}/{r}".lstrip("/") for r in rel] for i in range(num_layers)])
    for start, stop in zip(starts, starts[1:] + [num_layers]):
      cls: type = scanned_cls
      if layer_transform is not None:
        cls = layer_transform(cls, stop - start)
      unroll = min(cfg.scan_unroll, stop - start)
      if not decode:
        # Policy "none" too: a scan writes each residual the backward loop reads into a
        # stacked [layers, ...] buffer (dynamic-update-slice) and slices it back out
        # (dynamic-slice), weights as the dots see them included; recomputing all but
        # the matmul outputs in the backward loop is cheaper (SCANNED_REMAT_POLICIES).
        # prevent_cse=False: the loop keeps the recomputation from being merged with the
        # forward, unless it is unrolled away.
        cls = nn.remat(cls, policy=REMAT_POLICIES[SCANNED_REMAT_POLICIES.get(policy, policy)],
                       prevent_cse=unroll >= stop - start)
      scanned = nn.scan(cls, variable_axes={True: 0},
                        split_rngs={"params": True, "dropout": True, "reparam": True},
                        in_axes=(nn.broadcast,) * 6, length=stop - start,
                        unroll=unroll,
                        metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
      x, _ = scanned(cfg, cross=cross, train=train, decode=decode,
                     name=stack_name(start, len(starts) == 1))(
          x, mask, positions, cache_index, bias, memory, memory_mask)
    return x
  for i in range(num_layers):
    cls = block_cls if layer_transform is None else layer_transform(block_cls, 0)
    layer_cfg = cfg if block_configs is None else block_configs[i]
    x = rematerialised(cls, cfg, decode)(layer_cfg, cross=cross, name=layer_name(i))(
        x, mask, positions, train, decode, cache_index, bias, memory, memory_mask)
  return x


def _param_paths(block_cls: type, cfg: Any, cross: bool, x: Array, positions: Array,
                 memory: Array | None) -> list[str]:
  """Every parameter path (subtrees too) of one block, relative to it, from an abstract
  init: what a layer transform's `runs` matches its rules against."""
  def init():
    return block_cls(cfg, cross=cross, parent=None).init(
        jax.random.key(0), x, None, positions, False, False, None, None, memory, None)
  params = jax.eval_shape(init)["params"]
  out: list[str] = []

  def walk(tree: Any, prefix: str) -> None:
    for k, v in tree.items():
      path = f"{prefix}/{k}" if prefix else str(k)
      out.append(path)
      if hasattr(v, "items"):
        walk(v, path)
  walk(params, "")
  return out
