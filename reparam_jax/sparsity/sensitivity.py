r"""Sensitivity pruning: remove the units whose removal hurts the metric least.

The seeds' loop ("zero a parameter, evaluate the drop") at an affordable
granularity: a *unit* is one group of a `mask(pattern=group, …)` rule, i.e. an
attention head (its q/k/v columns and out rows together) or a block of MLP
neurons (fc_in columns and fc_out rows).  Greedy rounds:

  1. for every unit still kept, zero it alone and evaluate (on `max_batches`
     validation batches, an estimate that keeps the loop affordable);
  2. prune the `per_round` units with the smallest increase of the metric;
  3. stop at the target fraction of units, or before the metric (evaluated the
     same way) exceeds the starting value by more than `max_drop`.

Masks keep their shapes, so the jitted eval step compiles once.

  python -m reparam_jax.sparsity.sensitivity --workdir=RUN --target=0.25 \
      --granularity=heads --out=DIR [--max_drop=0.05 --per_round=2 --max_batches=4]

Multi-host: every process runs the same command with the trainer's flags
(`--distributed`, or `--coordinator_address=... --num_processes=N
--process_id=I`); the weights and masks stay split over the processes, and
process 0 writes the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.reparam import Reparam
from reparam_jax.reparam.rules import Plan
from reparam_jax.reparam.transforms.mask_update import Entry, _expand_groups, collect, write_back
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.rundir import workdir as rundir
from reparam_jax.rundir.workdir import load_run
from reparam_jax.sparsity.report import format_sparsity, sparsity_rows
from reparam_jax.training import devices
from reparam_jax.training.evaluate import Evaluator

PyTree = Any


def group_rules(granularity: str, num_heads: int, mlp_dim: int, neuron_block: int = 32,
                method: str = "fixed", extra: str = "") -> tuple[tuple[str, str], ...]:
  """Mask rules whose groups are heads and/or blocks of `neuron_block` MLP neurons."""
  if granularity not in ("heads", "neurons", "both"):
    raise UserError(f"granularity must be heads, neurons or both, got {granularity!r}")
  if mlp_dim % neuron_block:
    raise UserError(f"neuron_block={neuron_block} must divide mlp_dim={mlp_dim}")
  spec = lambda g, axis: (f"mask(method={method}, pattern='group', groups={g}, axis={axis}"  # noqa: E731
                          f"{', ' + extra if extra else ''})")
  rules = []
  if granularity in ("heads", "both"):
    rules += [(r"block_\d+/attn/(query|key|value)/kernel", spec(num_heads, 1)),
              (r"block_\d+/attn/out/kernel", spec(num_heads, 0))]
  if granularity in ("neurons", "both"):
    g = mlp_dim // neuron_block
    rules += [(r"block_\d+/mlp/fc_in/kernel", spec(g, 1)),
              (r"block_\d+/mlp/fc_out/kernel", spec(g, 0))]
  return tuple(rules)


@dataclasses.dataclass(frozen=True)
class Unit:
  module: str
  group: int


def units(entries: list[Entry]) -> list[Unit]:
  seen: dict[str, int] = {}
  for e in entries:
    seen[e.module] = e.stage.groups
  return [Unit(m, g) for m, n in seen.items() for g in range(n)]


def apply_units(entries: list[Entry], masks: PyTree, pruned: set[Unit]) -> PyTree:
  """`masks` with every group in `pruned` zeroed in all weights of its module."""
  by_module: dict[str, set[int]] = {}
  for u in pruned:
    by_module.setdefault(u.module, set()).add(u.group)
  new = []
  for e in entries:
    gone = by_module.get(e.module, set())
    keep_G = jnp.array([g not in gone for g in range(e.stage.groups)])
    aux = dict(e.aux, mask=_expand_groups(e, keep_G))
    new.append(dataclasses.replace(e, aux=aux))
  return write_back(masks, new)


def sensitivity_prune(params: PyTree, masks: PyTree, rules: tuple,
                      metric: Callable[[PyTree], float], target: float,
                      max_drop: float = float("inf"), per_round: int = 1,
                      log: Callable[[str], None] = print) -> tuple[PyTree, list[dict]]:
  """Greedy sensitivity pruning; returns (masks, history rows)."""
  entries = collect(Plan.from_config({"rules": rules}), params, masks)
  if not entries:
    raise UserError("sensitivity pruning needs mask(pattern='group') rules")
  all_units = units(entries)
  n_target = int(target * len(all_units) + 0.5)
  pruned: set[Unit] = set()
  base = metric(masks)
  history = [dict(round=0, pruned_units=0, fraction=0.0, metric=base)]
  log(f"sensitivity: {len(all_units)} units, start metric {base:.4f}, target {n_target} units")
  current = masks
  rnd = 0
  while len(pruned) < n_target:
    rnd += 1
    drops = []
    for u in all_units:
      if u not in pruned:
        drops.append((metric(apply_units(entries, masks, pruned | {u})) - base, u))
    drops.sort(key=lambda d: (d[0], d[1].module, d[1].group))
    take = {u for _, u in drops[:min(per_round, n_target - len(pruned))]}
    trial = apply_units(entries, masks, pruned | take)
    value = metric(trial)
    if value - base > max_drop:
      log(f"round {rnd}: pruning {len(take)} more units would raise the metric to {value:.4f} "
          f"(> start + {max_drop}); stopping")
      break
    pruned |= take
    current = trial
    history.append(dict(round=rnd, pruned_units=len(pruned),
                        fraction=len(pruned) / len(all_units), metric=value,
                        units=sorted(f"{u.module}#{u.group}" for u in take)))
    log(f"round {rnd}: pruned {sorted(f'{u.module}#{u.group}' for u in take)}; "
        f"{len(pruned)}/{len(all_units)} units, metric {value:.4f}")
  return current, history


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.sparsity.sensitivity")
  parser.add_argument("--workdir", required=True, help="a trained dense run")
  parser.add_argument("--out", required=True)
  parser.add_argument("--target", type=float, default=0.25, help="fraction of units to prune")
  parser.add_argument("--granularity", default="heads", choices=("heads", "neurons", "both"))
  parser.add_argument("--neuron_block", type=int, default=32)
  parser.add_argument("--max_drop", type=float, default=float("inf"))
  parser.add_argument("--per_round", type=int, default=1)
  parser.add_argument("--max_batches", type=int, default=4)
  devices.add_distributed_flags(parser)
  args = parser.parse_args(argv)
  devices.init_distributed_from_args(args)
  writer = jax.process_index() == 0  # one report, not one per process
  run = load_run(args.workdir)
  if run.config.reparam.get("rules"):
    raise UserError("sensitivity pruning starts from a dense run (config.reparam.rules is set)")
  rules = group_rules(args.granularity, run.config.model.num_heads, run.config.model.mlp_dim,
                      args.neuron_block)
  rp = Reparam.from_config({"rules": rules})
  theta = sharded.apply_spread(rp.from_dense, run.params)
  masks = rp.init_state(theta)
  evaluator = Evaluator(run.config, run.workdir)
  metric = lambda m: evaluator(theta, rules, m, args.max_batches)["loss"]  # noqa: E731
  masks, history = sensitivity_prune(theta, masks, rules, metric, args.target, args.max_drop,
                                     args.per_round, log=print if writer else lambda _: None)
  full = evaluator(theta, rules, masks)
  masks = sharded.spread(masks)  # each process saves its shards (orbax)
  checkpoint.save_params(rundir.path(args.out, rundir.MASKS), masks)
  result = dict(history=history, final=full, rules=rules)
  table = format_sparsity(sparsity_rows(theta, rp, masks))
  if writer:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sensitivity.json"), "w") as f:
      json.dump(result, f, indent=2, default=str)
    print(table)
    print(f"full validation split: {full}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
