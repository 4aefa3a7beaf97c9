"""The layer stack: `num_layers` blocks, unrolled or scanned, rematerialised or not.

* `model.scan_layers=False`: `block_0 ... block_{L-1}`, one subtree each; the
  compiled program holds L copies of the block, so compile time grows with depth.
* `model.scan_layers=True`: one `blocks` subtree whose leaves are stacked on a
  leading `layers` axis and an `nn.scan` over it (MaxText, big_vision): the
  block is traced and compiled once.  pytree/layers.py converts checkpoints
  between the two layouts; rules name layers by their unrolled paths.
* `model.remat`: what the backward pass may keep of each block's forward
  (`REMAT_POLICIES`); `full` keeps only the block's inputs.
* `layer_transform(cls, stacked)`: a class transform applied to the block
  class before remat and scan.  The reparameterization passes one that
  computes each layer's effective weights inside the layer (reparam/intercept.py),
  so under remat they are recomputed in the backward pass instead of living
  through the step.  The model never learns which transform it is.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

from reparam_jax.pytree.layers import LAYER_AXIS, STACK, layer_name

Array = jax.Array
LayerTransform = Callable[[type, int], type]  # (block class, stacked depth or 0) → class

# model.remat → what the backward pass may keep of a block's forward activations.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no remat: everything the backward needs is kept
    "full": jax.checkpoint_policies.nothing_saveable,  # keep the block's inputs only
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight-like dots
}


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
               cross: bool = False, layer_transform: LayerTransform | None = None) -> Array:
  """Applies `num_layers` blocks of `cfg` to x; called inside the owner's compact method.

  `blocks`: the block class and its scan (carry) form, `(Block, ScannedBlock)`
  of block.py: (x, mask, positions, cache_index, bias, memory,
  memory_mask) → (x, None), with `train` and `decode` as fields.
  """
  block_cls, scanned_cls = blocks
  policy = remat_policy_name(cfg.remat)
  remat = policy != "none" and not decode  # decoding never differentiates
  if cfg.scan_layers:
    cls: type = scanned_cls
    if layer_transform is not None:
      cls = layer_transform(cls, num_layers)
    if remat:
      # prevent_cse=False: scan already keeps the recomputation from being merged away.
      cls = nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=False)
    scanned = nn.scan(cls, variable_axes={True: 0},
                      split_rngs={"params": True, "dropout": True, "reparam": True},
                      in_axes=(nn.broadcast,) * 6, length=num_layers,
                      metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
    x, _ = scanned(cfg, cross=cross, train=train, decode=decode, name=STACK)(
        x, mask, positions, cache_index, bias, memory, memory_mask)
    return x
  for i in range(num_layers):
    cls = block_cls if layer_transform is None else layer_transform(block_cls, 0)
    x = rematerialised(cls, cfg, decode)(cfg, cross=cross, name=layer_name(i))(
        x, mask, positions, train, decode, cache_index, bias, memory, memory_mask)
  return x
