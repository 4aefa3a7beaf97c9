"""Parameter, FLOP and storage accounting per reparameterized weight."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax.core import meta

from reparam_jax.pytree.paths import flatten_with_paths
from reparam_jax.reparam.matrix import MatrixView
from reparam_jax.reparam.rules import Plan, map_theta

PyTree = Any


def _leaves(tree: Any) -> list[Any]:
  return jax.tree_util.tree_leaves(meta.unbox(tree))


def _size(x: Any) -> int:
  return int(math.prod(x.shape))


def _bits(x: Any) -> int:
  return _size(x) * np.dtype(x.dtype).itemsize * 8


def _is_matmul(path: str, shape: tuple[int, ...]) -> bool:
  # 2-D weights multiply activations; embedding tables are gathered (no FLOPs).
  return len(shape) == 2 and not path.endswith("embedding")


def weight_stats(node: Any, theta: Any, path: str = "", structured: bool = True) -> dict[str, Any]:
  """Counts for one weight's θ (arrays or ShapeDtypeStructs)."""
  raw = meta.unbox(theta)
  shape = tuple(node.dense_shape(raw))
  dense = math.prod(shape)
  mask = node.trainable(raw)
  leaves = _leaves(raw)
  flags = jax.tree_util.tree_leaves(mask)
  if len(flags) != len(leaves):  # a single bool for a whole subtree
    flags = [bool(flags[0])] * len(leaves)
  stored = sum(_size(x) for x in leaves)
  # An N-D kernel viewed as a matrix (matrix.py) multiplies activations as that matrix.
  matmul = _is_matmul(path, shape) or isinstance(node, MatrixView)
  flops_dense = 2 * dense if matmul else 0
  flops = (node.flops(raw) if structured else flops_dense) if matmul else 0
  decay = node.decayable(raw)
  decayed = [p for p, on in flatten_with_paths(decay) if on] if isinstance(decay, dict) else (
      ["(all)"] if decay else [])
  return dict(shape=shape, dense=dense, stored=stored, decayed=",".join(decayed) or "-",
              trainable=sum(_size(x) for x, t in zip(leaves, flags) if t),
              trainable_bytes=sum(_bits(x) for x, t in zip(leaves, flags) if t) // 8,
              frozen_bytes=sum(_bits(x) for x, t in zip(leaves, flags) if not t) // 8,
              flops_dense=flops_dense, flops=flops,
              bits_per_weight=sum(_bits(x) for x in leaves) / max(dense, 1),
              compression=dense / max(stored, 1))


def matmul_flops_by_path(params: PyTree, plan: Plan, structured: bool = True
                         ) -> dict[str, int]:
  """Forward matmul FLOPs per use (2·MACs) of every weight: plain 2-D weights and whole
  reparameterized θ (as executed: a factored kernel counts its factors)."""
  out: dict[str, int] = {}

  def visit(path, rule, theta):
    if rule is None:
      x = meta.unbox(theta)
      out[path] = 2 * _size(x) if _is_matmul(path, tuple(x.shape)) else 0
    else:
      out[path] = weight_stats(rule.node, theta, path, structured)["flops"]
    return theta

  map_theta(plan, params, visit)
  return out


def report_rows(params: PyTree, plan: Plan, tokens_per_seq: int | None = None,
                structured: bool = True) -> list[dict[str, Any]]:
  """One row per reparameterized weight, then a `total` row over all parameters.

  `params` is the θ params collection, concrete or abstract (`jax.eval_shape`
  of the wrapped model's init).  Columns: path, spec, shape, dense (entries
  of the effective weight), stored (θ entries), trainable, flops_dense and
  flops (matmul FLOPs per token, forward, 2·MACs), bits_per_weight (stored
  bits per effective entry), compression (dense/stored); with
  `tokens_per_seq`, also flops_per_seq.
  """
  rows: list[dict[str, Any]] = []
  total = dict(path="total", spec="", shape=(), dense=0, stored=0, trainable=0, flops_dense=0,
               flops=0, bits=0)

  def visit(path, rule, theta):
    if rule is None:
      x = meta.unbox(theta)
      n = _size(x)
      f = 2 * n if _is_matmul(path, tuple(x.shape)) else 0
      for k, v in dict(dense=n, stored=n, trainable=n, flops_dense=f, flops=f,
                       bits=_bits(x)).items():
        total[k] += v
      return theta
    row = dict(path=path, spec=rule.spec, **weight_stats(rule.node, theta, path, structured))
    rows.append(row)
    for k in ("dense", "stored", "trainable", "flops_dense", "flops"):
      total[k] += row[k]
    total["bits"] += row["bits_per_weight"] * row["dense"]
    return theta

  map_theta(plan, params, visit, require_all=True)
  total["bits_per_weight"] = total.pop("bits") / max(total["dense"], 1)
  total["compression"] = total["dense"] / max(total["stored"], 1)
  rows.append(total)
  if tokens_per_seq:
    for r in rows:
      r["flops_per_seq"] = r["flops"] * tokens_per_seq
  return rows


def _fmt_int(n: int) -> str:
  return f"{n:,}"


def format_report(rows: list[dict[str, Any]]) -> str:
  """A fixed-width table of `report_rows`."""
  cols = [("path", "path"), ("spec", "transform"), ("shape", "shape"), ("dense", "dense params"),
          ("stored", "stored"), ("trainable", "trainable"), ("flops_dense", "dense FLOPs/tok"),
          ("flops", "FLOPs/tok"), ("bits_per_weight", "bits/w"), ("compression", "ratio"),
          ("decayed", "weight decay on")]
  if rows and "flops_per_seq" in rows[0]:
    cols.append(("flops_per_seq", "FLOPs/seq"))

  def cell(key, v):
    if key == "shape":
      return "x".join(map(str, v)) if v else ""
    if key in ("bits_per_weight",):
      return f"{v:.2f}"
    if key == "compression":
      return f"{v:.2f}x"
    if isinstance(v, int):
      return _fmt_int(v)
    return str(v)

  table = [[h for _, h in cols]] + [[cell(k, r.get(k, "")) for k, _ in cols] for r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
  lines = []
  for j, row in enumerate(table):
    lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    if j == 0 or j == len(table) - 2:
      lines.append("-" * len(lines[-1]))
  return "\n".join(lines)


def rule_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per transform spec (one per rule, e.g. one adapter): how many weights it covers,
  its trainable parameters and their bytes (what saving the adapter alone writes), the
  bytes of what it keeps frozen (an adapter's base), and the matmul FLOPs per token it
  adds over the dense weights (negative: it saves)."""
  out: dict[str, dict[str, Any]] = {}
  for r in rows:
    if r["path"] == "total" or not r.get("spec"):  # the totals, the tied output layer
      continue
    s = out.setdefault(r["spec"], dict(spec=r["spec"], weights=0, trainable=0,
                                       trainable_bytes=0, frozen_bytes=0, extra_flops=0))
    s["weights"] += 1
    s["trainable"] += r["trainable"]
    s["trainable_bytes"] += r.get("trainable_bytes", 0)
    s["frozen_bytes"] += r.get("frozen_bytes", 0)
    s["extra_flops"] += r["flops"] - r["flops_dense"]
  return list(out.values())


def format_rule_summary(rows: list[dict[str, Any]]) -> str:
  """A fixed-width table of `rule_summary(rows)`."""
  cols = [("spec", "transform"), ("weights", "weights"), ("trainable", "trainable"),
          ("trainable_bytes", "trainable bytes"), ("frozen_bytes", "frozen bytes"),
          ("extra_flops", "extra FLOPs/tok")]
  table = [[h for _, h in cols]] + [
      [str(r[k]) if k == "spec" else _fmt_int(r[k]) for k, _ in cols] for r in rule_summary(rows)]
  widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in table]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)
