r"""Converts params checkpoints between dense and reparameterized form.

  python -m reparam_jax.convert --config=configs/lm/x.py [--config.reparam.rank=32] \
      --direction=to_reparam --src=/ckpt/dense_params --dst=/ckpt/lowrank_params

`to_reparam` represents each weight a rule matches by its transform's
`from_dense` (exact for spherical/weightnorm/LoRA, best rank-r fit for
low-rank, ...); `to_dense` materializes every reparameterized weight (LoRA
merged into W₀, variational weights at their mean), giving a plain checkpoint
any model without `config.reparam` loads.  The library calls are
`Reparam.from_dense` and `Reparam.to_dense`.

Multi-host (a model too big for one host): every process runs the same
command with the trainer's flags (`--distributed`, or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`).  Each
process reads, converts and writes only its shards of every array
(`rundir/sharded.py`); no host holds the whole checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import jax

from reparam_jax.config import load as config_load
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.reparam import Reparam
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.rundir import workdir as rundir
from reparam_jax.training import devices


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  config, rest = config_load.load(argv)
  parser = argparse.ArgumentParser(prog="python -m reparam_jax.convert", allow_abbrev=False)
  parser.add_argument("--direction", choices=("to_reparam", "to_dense"), required=True)
  parser.add_argument("--src", required=True, help="params checkpoint or training workdir")
  parser.add_argument("--dst", required=True, help="where to write the converted params")
  parser.add_argument("--seed", type=int, default=0)
  devices.add_distributed_flags(parser)
  args = parser.parse_args(rest)
  rp = Reparam.from_config(config.reparam)
  if not rp.active:
    raise UserError("config.reparam.rules is empty: nothing to convert")
  devices.init_distributed_from_args(args)
  params = checkpoint.load_params(args.src)  # split over every process's devices
  if args.direction == "to_reparam":
    out = sharded.apply_spread(lambda p: rp.from_dense(p, jax.random.key(args.seed)), params)
  else:  # a pruned run's masks apply, as they did in training
    masks = rundir.load_masks(args.src) if os.path.isdir(args.src) else None
    out = sharded.apply_spread(rp.to_dense, params, masks)
  checkpoint.save_params(args.dst, out)  # orbax: each process writes its own shards
  n_in = sum(x.size for x in jax.tree.leaves(params))
  n_out = sum(x.size for x in jax.tree.leaves(out))
  if jax.process_count() > 1:
    print(f"process {jax.process_index()} of {jax.process_count()} held "
          f"{sharded.host_share(out):.0%} of the converted values", flush=True)
  if jax.process_index() == 0:
    print(f"{args.direction}: {args.src} ({n_in:,} values) -> {args.dst} ({n_out:,} values)")


if __name__ == "__main__":
  main()
