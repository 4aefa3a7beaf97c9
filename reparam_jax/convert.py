r"""Converts params checkpoints between dense and reparameterized form.

  python -m reparam_jax.convert --config=configs/lm/x.py [--config.reparam.rank=32] \
      --direction=to_reparam --src=/ckpt/dense_params --dst=/ckpt/lowrank_params

`to_reparam` represents each weight a rule matches by its transform's
`from_dense` (exact for spherical/weightnorm/LoRA, best rank-r fit for
low-rank, ...); `to_dense` materializes every reparameterized weight (LoRA
merged into W₀, variational weights at their mean), giving a plain checkpoint
any model without `config.reparam` loads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
from flax.core import meta

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.reparam.base import materialize
from reparam_jax.reparam.intercept import dense_to_theta
from reparam_jax.reparam.rules import Plan, map_theta, path_key
from reparam_jax.rundir import checkpoint

PyTree = Any


def dense_to_reparam(dense_params: PyTree, reparam_cfg: Any, key: jax.Array | None = None
                     ) -> PyTree:
  """θ params representing (or best approximating) `dense_params`.

  Boxed leaves give boxed θ (names derived from the weight's); plain leaves
  give plain θ.  `key` seeds randomized conversions (ALS start, LoRA's A).
  """
  plan = Plan.from_config(reparam_cfg)
  key = jax.random.key(0) if key is None else key
  return dense_to_theta(plan, dense_params,
                        lambda path, node, w: node.from_dense(w, path_key(key, path)))


def reparam_to_dense(params: PyTree, reparam_cfg: Any) -> PyTree:
  """Dense params: each θ replaced by its effective weight (deterministic: no sampling)."""
  plan = Plan.from_config(reparam_cfg)

  def fn(path, rule, theta):
    if rule is None:
      return theta
    return materialize(rule.node.apply(meta.unbox(theta), None))

  return map_theta(plan, params, fn, require_all=True)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  config, rest = config_load.load(argv)
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.convert", allow_abbrev=False)
  parser.add_argument("--direction", choices=("to_reparam", "to_dense"), required=True)
  parser.add_argument("--src", required=True, help="params checkpoint or training workdir")
  parser.add_argument("--dst", required=True, help="where to write the converted params")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(rest)
  if not config.reparam.get("rules"):
    raise UserError("config.reparam.rules is empty: nothing to convert")
  params = checkpoint.load_params(args.src)
  if args.direction == "to_reparam":
    out = dense_to_reparam(params, config.reparam, jax.random.key(args.seed))
  else:
    out = reparam_to_dense(params, config.reparam)
  checkpoint.save_params(args.dst, jax.device_get(out))
  n_in = sum(x.size for x in jax.tree.leaves(params))
  n_out = sum(x.size for x in jax.tree.leaves(out))
  print(f"{args.direction}: {args.src} ({n_in:,} values) -> {args.dst} ({n_out:,} values)")


if __name__ == "__main__":
  main()
