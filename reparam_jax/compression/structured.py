"""Structured pruning: attention heads and MLP neurons physically removed.

Pure functions over a dense Transformer parameter tree (`block_{i}/attn/...`,
`block_{i}/mlp/...`; a scanned `blocks` stack is unstacked first).  Each
returns the smaller tree and the `TransformerConfig` that builds it: block i
gets `layer_heads[i]` query heads and `layer_mlp_dims[i]` MLP units
(docs/structured_pruning.md).

Units removed:
* attention: whole key/value groups — one key/value head and the
  `num_heads // kv_heads` query heads that read it (one query head without
  grouped-query attention).  Query/key/value kernel columns and biases, and
  the rows of the output kernel, of the removed heads go; head_dim stays.
* MLP: one hidden unit — a column of fc_in (and fc_gate) with its bias entry,
  and the row of fc_out.

Scores are calibration-free magnitudes of each unit's path to the residual
stream (a unit whose output weights are zero scores 0, so it goes first):
  head group g:  ‖[W_v[:, g] ; b_v[g]]‖ · Σ_{h ∈ g} ‖W_out[h, :]‖
  neuron j:      ‖W_out[j, :]‖ · ‖[W_in[:, j] ; b_in[j]]‖ (· ‖[W_gate[:, j] ; b_gate[j]]‖)
`activation_scores` is the calibration-based alternative, Wanda's |W|·‖X‖
(Sun et al. 2024) summed over a unit's rows of the output projection, from the
`LayerStats` that compression/calibration.py collects.  Any other score can be
handed in too: one array per layer, one entry per unit, larger = keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax.core import meta, unfreeze

from reparam_jax.errors import UserError
from reparam_jax.models.config import TransformerConfig
from reparam_jax.pytree import layers

PyTree = Any
# How many units (head groups / neurons) each layer keeps: one count for every layer, one
# count per layer, or a fraction in (0, 1] of each layer's units.
Keep = int | float | Sequence[int]


def _dense_layers(params: PyTree, cfg: TransformerConfig, what: str) -> dict[str, Any]:
  """The tree as plain nested dicts of NumPy arrays, layers unrolled; refuses what it cannot
  slice."""
  if cfg.share_layers:
    raise UserError(f"{what}: a model with share_layers=True has one block for every layer; "
                    "structured pruning needs share_layers=False")
  tree = _to_numpy(layers.unstack_layers(unfreeze(meta.unbox(params))))
  if "block_0" not in tree or "attn" not in tree["block_0"]:
    raise UserError(f"{what}: the params have no block_0/attn (a Transformer's backbone at "
                    "the top level, dense weights: apply a reparameterization's to_dense first)")
  if not isinstance(tree["block_0"]["attn"].get("query", {}).get("kernel"), np.ndarray):
    raise UserError(f"{what}: block_0/attn/query has no dense kernel (a reparameterized layer?); "
                    "apply the reparameterization's to_dense first")
  return tree


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def _restore(tree: dict[str, Any], cfg: TransformerConfig) -> dict[str, Any]:
  """Back to the scanned layout when the config still scans (all layers alike)."""
  return layers.stack_layers(tree) if cfg.scan_layers else tree


def _norm(array: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
  """L2 norm over `axis`, in float64 (scores of bf16 weights rank the same on every host)."""
  return np.sqrt(np.sum(np.square(array.astype(np.float64)), axis=axis))


def _cols(kernel: np.ndarray, units: int) -> np.ndarray:
  """[D, U*W] kernel → [D, U, W]: the fused output axis split per unit."""
  return kernel.reshape(kernel.shape[0], units, -1)


def head_scores(params: PyTree, cfg: TransformerConfig) -> list[np.ndarray]:
  """Per layer, one score per key/value group (the unit `prune_heads` removes)."""
  tree = _dense_layers(params, cfg, "head_scores")
  group = cfg.num_heads // cfg.kv_heads
  out = []
  for i in range(cfg.num_layers):
    attn, block_cfg = tree[f"block_{i}"]["attn"], cfg.block_config(i)
    K, G = block_cfg.head_dim, block_cfg.kv_heads
    value = _cols(attn["value"]["kernel"], G)
    bias = attn["value"].get("bias")
    value_norm = np.sqrt(np.square(_norm(value, axis=(0, 2))) +
                         (0 if bias is None else np.square(_norm(bias.reshape(G, K), axis=1))))
    out_norm = _norm(attn["out"]["kernel"].reshape(G, group, K, -1), axis=(2, 3)).sum(axis=1)
    out.append(value_norm * out_norm)
  return out


def neuron_scores(params: PyTree, cfg: TransformerConfig) -> list[np.ndarray]:
  """Per layer, one score per MLP hidden unit."""
  tree = _dense_layers(params, cfg, "neuron_scores")
  out = []
  for i in range(cfg.num_layers):
    mlp = tree[f"block_{i}"]["mlp"]
    score = _norm(mlp["fc_out"]["kernel"], axis=1)
    for name in ("fc_in", "fc_gate"):
      if name in mlp:
        bias = mlp[name].get("bias")
        score = score * np.sqrt(np.square(_norm(mlp[name]["kernel"], axis=0)) +
                                (0 if bias is None else np.square(bias.astype(np.float64))))
    out.append(score)
  return out


def activation_scores(params: PyTree, cfg: TransformerConfig, stats: Mapping[str, Any]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(head-group scores, neuron scores) per layer: Σ_r Σ_o |W[r, o]|·‖X_r‖ over the unit's
  input rows r of attn/out (its heads' K rows each) and of mlp/fc_out (one row), with ‖X_r‖
  the L2 norm of input feature r over the calibration tokens, √(Σxᵀx)_rr of the layer's
  `LayerStats` (compression/methods).  `stats` maps `block_{i}/attn/out` and
  `block_{i}/mlp/fc_out` (or the same with `/kernel`) to those stats."""
  tree = _dense_layers(params, cfg, "activation_scores")
  group = cfg.num_heads // cfg.kv_heads

  def wanda_rows(path: str, kernel: np.ndarray) -> np.ndarray:
    found = stats.get(path, stats.get(f"{path}/kernel"))
    if found is None:
      raise UserError(f"activation_scores: no calibration statistics for {path}; collect "
                      "them for every block's attn/out and mlp/fc_out")
    x_norm = np.sqrt(np.maximum(np.diag(np.asarray(found.hessian_IxI, np.float64)), 0.0))
    return np.abs(kernel.astype(np.float64)).sum(axis=1) * x_norm

  heads, neurons = [], []
  for i in range(cfg.num_layers):
    block, block_cfg = tree[f"block_{i}"], cfg.block_config(i)
    rows = wanda_rows(f"block_{i}/attn/out", block["attn"]["out"]["kernel"])
    heads.append(rows.reshape(block_cfg.kv_heads, group * block_cfg.head_dim).sum(axis=1))
    neurons.append(wanda_rows(f"block_{i}/mlp/fc_out", block["mlp"]["fc_out"]["kernel"]))
  return heads, neurons


def _counts(keep: Keep, units: Sequence[int], scores: Sequence[np.ndarray], across_layers: bool,
            what: str) -> list[int]:
  """Units each layer keeps, from `keep` (see `Keep`); at least one per layer."""
  n = len(units)
  if isinstance(keep, float):
    if not 0.0 < keep <= 1.0:
      raise UserError(f"{what}: keep={keep} is a fraction outside (0, 1]; give the fraction of "
                      "units to keep, or a count")
    if across_layers:  # the best `keep` of all units, ranked together, one at least per layer
      total = max(n, round(keep * sum(units)))
      ranked = np.argsort(-np.concatenate(scores), kind="stable")[:total]
      layer_of = np.repeat(np.arange(n), units)
      counts = np.bincount(layer_of[ranked], minlength=n)
      return [max(1, int(c)) for c in counts]
    return [max(1, round(keep * u)) for u in units]
  counts = [int(keep)] * n if isinstance(keep, (int, np.integer)) else [int(k) for k in keep]
  if len(counts) != n:
    raise UserError(f"{what}: keep has {len(counts)} counts for {n} layers; give one per layer")
  bad = [(i, c, u) for i, (c, u) in enumerate(zip(counts, units)) if not 1 <= c <= u]
  if bad:
    i, c, u = bad[0]
    raise UserError(f"{what}: layer {i} keeps {c} of its {u} units; keep between 1 and {u}")
  return counts


def _kept(scores: np.ndarray, count: int) -> np.ndarray:
  """Indices of the `count` best units, in their original order (ties: the earlier unit)."""
  return np.sort(np.argsort(-scores, kind="stable")[:count])


def prune_heads(params: PyTree, cfg: TransformerConfig, keep: Keep,
                scores: Sequence[np.ndarray] | None = None, across_layers: bool = False
                ) -> tuple[dict[str, Any], TransformerConfig]:
  """(smaller params, its config): each layer keeps its best key/value groups by `scores`
  (default `head_scores`); `keep` counts query heads — a multiple of the group size
  num_heads // num_kv_heads — or is a fraction of each layer's heads (rounded to whole
  groups); `across_layers` ranks a fraction's groups over all layers together."""
  tree = _dense_layers(params, cfg, "prune_heads")
  group = cfg.num_heads // cfg.kv_heads
  scores = head_scores(tree, dataclasses.replace(cfg, scan_layers=False)) if scores is None \
      else [np.asarray(s) for s in scores]
  groups = [h // group for h in cfg.heads_by_layer]
  if not isinstance(keep, float):
    heads = [int(keep)] * cfg.num_layers if isinstance(keep, (int, np.integer)) else list(keep)
    odd = [h for h in heads if h % group]
    if odd:
      raise UserError(f"prune_heads: keep={odd[0]} heads is not whole key/value groups of "
                      f"{group}; keep a multiple of {group}")
    keep = [h // group for h in heads]
  _check_scores(scores, groups, "prune_heads", "key/value groups")
  counts = _counts(keep, groups, scores, across_layers, "prune_heads")
  for i, count in enumerate(counts):
    block_cfg = cfg.block_config(i)
    K, G = block_cfg.head_dim, block_cfg.kv_heads
    kv = _kept(scores[i], count)
    q = (kv[:, None] * group + np.arange(group)[None, :]).reshape(-1)
    attn = tree[f"block_{i}"]["attn"]
    for name, units, index in (("query", G * group, q), ("key", G, kv), ("value", G, kv)):
      attn[name]["kernel"] = _cols(attn[name]["kernel"], units)[:, index].reshape(
          attn[name]["kernel"].shape[0], -1)
      if "bias" in attn[name]:
        attn[name]["bias"] = attn[name]["bias"].reshape(units, K)[index].reshape(-1)
    out = attn["out"]["kernel"]
    attn["out"]["kernel"] = out.reshape(G * group, K, -1)[q].reshape(-1, out.shape[1])
  new_cfg = _with_shapes(cfg, layer_heads=tuple(c * group for c in counts))
  return _restore(tree, new_cfg), new_cfg


def prune_neurons(params: PyTree, cfg: TransformerConfig, keep: Keep,
                  scores: Sequence[np.ndarray] | None = None, across_layers: bool = False
                  ) -> tuple[dict[str, Any], TransformerConfig]:
  """(smaller params, its config): each layer keeps its `keep` best MLP hidden units by
  `scores` (default `neuron_scores`): a count, counts per layer, or a fraction;
  `across_layers` ranks a fraction's units over all layers together."""
  tree = _dense_layers(params, cfg, "prune_neurons")
  scores = neuron_scores(tree, dataclasses.replace(cfg, scan_layers=False)) if scores is None \
      else [np.asarray(s) for s in scores]
  widths = list(cfg.mlp_dims_by_layer)
  _check_scores(scores, widths, "prune_neurons", "MLP units")
  counts = _counts(keep, widths, scores, across_layers, "prune_neurons")
  for i, count in enumerate(counts):
    kept = _kept(scores[i], count)
    mlp = tree[f"block_{i}"]["mlp"]
    for name in ("fc_in", "fc_gate"):
      if name in mlp:
        mlp[name]["kernel"] = mlp[name]["kernel"][:, kept]
        if "bias" in mlp[name]:
          mlp[name]["bias"] = mlp[name]["bias"][kept]
    mlp["fc_out"]["kernel"] = mlp["fc_out"]["kernel"][kept]
  new_cfg = _with_shapes(cfg, layer_mlp_dims=tuple(counts))
  return _restore(tree, new_cfg), new_cfg


def _check_scores(scores: Sequence[np.ndarray], units: Sequence[int], what: str,
                  unit_name: str) -> None:
  shapes = [np.shape(s) for s in scores]
  if shapes != [(u,) for u in units]:
    raise UserError(f"{what}: scores have shapes {shapes}; give one array per layer with one "
                    f"entry per {unit_name[:-1]} ({list(units)} {unit_name})")


def _with_shapes(cfg: TransformerConfig, **shapes: tuple[int, ...]) -> TransformerConfig:
  """`cfg` with new per-layer shapes; a scanned stack stays scanned only if they agree."""
  merged = {"layer_heads": cfg.layer_heads, "layer_mlp_dims": cfg.layer_mlp_dims, **shapes}
  uniform = all(len(set(v)) <= 1 for v in merged.values())
  return dataclasses.replace(cfg, scan_layers=cfg.scan_layers and uniform, **shapes)
