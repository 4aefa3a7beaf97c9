"""Fine-tuning freezing strategies: which parameters the optimizer may update.

`config.finetune.freeze` picks one (see docs/tasks.md):

  none          every parameter trains (the default; no mask at all)
  all_but_head  only the task head(s) train: a linear probe on frozen features
  top_k         the head, the top `finetune.top_k` blocks and everything above
                the blocks (final LayerNorm, pooler, output projection) train;
                the embeddings and lower blocks are frozen (Howard & Ruder 2018;
                Lee et al. 2019 "What would Elsa do?" freeze the bottom layers)
  lora          only adapters and the head train, as in Hu et al. (2021)'s GLUE
                runs: the own θ leaves of every adapter (wrapper) stage of
                `config.reparam.rules` — LoRA's `lora_a`, `lora_b`, DoRA's
                `magnitude`, VeRA's vectors, (IA)³'s scales, `delta`

A head is any parameter whose path has a component matching
`finetune.head_regex` (default: `classifier`, `head`, or a name ending in
`_head` such as `mlm_head`, `nsp_head`, `lm_head`).  Paths are matched
anywhere in the tree, so a backbone nested under a submodule works too.

The mask is a bool pytree like the params (True = trainable).  The trainer
ANDs it with the reparameterization's own mask (LoRA's frozen W₀) and hands
the result to `optim.make_optimizer`, whose frozen leaves get
`optax.set_to_zero()`: no update, no weight decay, no optimizer state — a
frozen parameter is bit-identical after training.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections

from reparam_jax.errors import UserError
from reparam_jax.reparam import TRANSFORMS

PyTree = Any

STRATEGIES = ("none", "all_but_head", "top_k", "lora")
DEFAULT_HEAD_REGEX = r"classifier|head|\w+_head"
_BLOCK = re.compile(r"^block_(\d+)$")
_PROJ = re.compile(r"^proj_(\d+)$")


def _path(key_path: tuple) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def _leaf_paths(params: PyTree) -> list[tuple[str, ...]]:
  return [_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _num_blocks(paths: list[tuple[str, ...]]) -> int:
  indices = [int(m.group(1)) for p in paths for part in p if (m := _BLOCK.match(part))]
  return max(indices) + 1 if indices else 0


def trainable_mask(params: PyTree, finetune_cfg: ml_collections.ConfigDict | None
                   ) -> PyTree | None:
  """True where the optimizer updates a leaf; None when nothing is frozen."""
  strategy = (finetune_cfg or {}).get("freeze", "none") or "none"
  if strategy not in STRATEGIES:
    raise UserError(f"unknown finetune.freeze {strategy!r}; use one of {', '.join(STRATEGIES)}")
  if strategy == "none":
    return None
  try:
    head = re.compile(finetune_cfg.get("head_regex") or DEFAULT_HEAD_REGEX)
  except re.error as e:
    raise UserError(f"finetune.head_regex {finetune_cfg.get('head_regex')!r}: {e}") from None
  paths = _leaf_paths(params)
  is_head = lambda p: any(head.fullmatch(part) for part in p)  # noqa: E731

  if strategy == "all_but_head":
    keep = is_head
  elif strategy == "lora":
    adapter_keys = _adapter_keys()
    if not any(p[-1] in adapter_keys for p in paths):
      raise UserError("finetune.freeze='lora' needs LoRA adapters: add a rule such as "
                      "(r'block_\\d+/attn/(query|value)/kernel', 'lora(rank=8, alpha=16)') to "
                      "config.reparam.rules")
    keep = lambda p: is_head(p) or p[-1] in adapter_keys  # noqa: E731
  else:  # top_k
    k = int(finetune_cfg.get("top_k", 0))
    if any("block_shared" in p for p in paths):
      raise UserError("finetune.freeze='top_k' needs separate blocks, but the model shares "
                      "one block across layers (model.share_layers); use 'all_but_head', "
                      "'lora' or 'none'")
    n = _num_blocks(paths)
    if not 0 <= k <= n:
      raise UserError(f"finetune.top_k={k} must be between 0 and the {n} blocks")
    keep = lambda p: is_head(p) or _above(p, n - k)  # noqa: E731
  flat = [keep(p) for p in paths]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flat)


def _adapter_keys() -> frozenset[str]:
  """Leaf names of adapter stages: the own θ keys of every registered wrapper transform
  (a new adapter transform is covered by registering it)."""
  return frozenset(k for cls in TRANSFORMS.values() if cls.wraps
                   for k in getattr(cls, "keys", ()) if isinstance(k, str))


def _above(path: tuple[str, ...], first_trainable: int) -> bool:
  """Whether `path` lies at or above block `first_trainable` of the stack."""
  for part in path:
    if part == "embed":
      return False
    m = _BLOCK.match(part) or _PROJ.match(part)
    if m:
      # proj_i feeds block i: it trains with the block it feeds.
      return int(m.group(1)) >= first_trainable
  return True  # ln_final, pooler, proj_out, lm_head: above every block


def combine(a: PyTree | None, b: PyTree | None) -> PyTree | None:
  """Logical AND of two masks; either may be None (all trainable).

  A mask may hold one bool for a whole subtree (the reparameterization's
  mask does for an untouched θ), so `a` is matched as a prefix of `b` and
  the other way round.
  """
  if a is None or b is None:
    return b if a is None else a
  try:
    return jax.tree.map(lambda x, sub: jax.tree.map(lambda y: bool(x) and bool(y), sub), a, b)
  except ValueError:
    return jax.tree.map(lambda y, sub: jax.tree.map(lambda x: bool(x) and bool(y), sub), b, a)


def count_trainable(params: PyTree, mask: PyTree | None, measure: str = "size") -> int:
  """Entries (`measure='size'`) or bytes (`'nbytes'`) of `params` the optimizer updates
  under `mask` (a `combine`d mask; None = all)."""
  if mask is None:
    return int(sum(getattr(x, measure) for x in jax.tree.leaves(params)))
  total = 0
  for trains, sub in zip(jax.tree.leaves(mask), _prefix_subtrees(mask, params)):
    if trains:
      total += int(sum(getattr(x, measure) for x in jax.tree.leaves(sub)))
  return total


def _prefix_subtrees(mask: PyTree, params: PyTree) -> list[PyTree]:
  """The subtree of `params` under each leaf of `mask` (a prefix of `params`)."""
  return jax.tree.leaves(jax.tree.map(lambda _, sub: [sub], mask, params),
                         is_leaf=lambda x: isinstance(x, list))


def finetune_section() -> ml_collections.ConfigDict:
  """The `config.finetune` defaults (also in `config_base.base_config`)."""
  c = ml_collections.ConfigDict()
  c.freeze = "none"
  c.top_k = 2
  c.head_regex = DEFAULT_HEAD_REGEX
  return c


def summary(params: PyTree, mask: PyTree | None) -> tuple[int, int]:
  """(trainable, total) parameter counts under `mask`."""
  total = sum(x.size for x in jax.tree.leaves(params))
  if mask is None:
    return total, total
  kept = jax.tree.map(lambda m, sub: sum(x.size for x in jax.tree.leaves(sub)) if m else 0,
                      mask, params)
  return int(sum(jax.tree.leaves(kept))), total
