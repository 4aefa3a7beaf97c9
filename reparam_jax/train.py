r"""Trains a (reparameterized) Transformer.

  python -m reparam_jax.train --config=configs/lm/shakespeare_char.py --workdir=/tmp/run \
      [--config.optimizer.lr=3e-4 ...] [--distributed]

Multi-host: `--distributed` calls `jax.distributed.initialize()`, which reads
the SLURM / TPU environment; `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` set it by hand (CPU processes use gloo).
The loop itself is `reparam_jax.training.loop.train_and_evaluate`; a config with
`compress.recipe` set compresses its `init_from` run instead
(`reparam_jax.compression.from_config`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from reparam_jax.compression.from_config import compress_run
from reparam_jax.config import load as config_load
from reparam_jax.config import validate as config_validate
from reparam_jax.errors import UserError, exit_on_user_error
from reparam_jax.hf import pretrained
from reparam_jax.training import devices
from reparam_jax.training.loop import train_and_evaluate


def parse_flags(argv: Sequence[str]) -> dict[str, str]:
  """`--name=value` and bare `--name` (→ "true") flags left over by the config loader."""
  flags = {}
  for arg in argv:
    if arg.startswith("--") and "=" in arg:
      k, v = arg[2:].split("=", 1)
      flags[k] = v
    elif arg.startswith("--"):
      flags[arg[2:]] = "true"
  return flags


@exit_on_user_error
def main(argv: Sequence[str]) -> dict[str, Any]:
  config, rest = config_load.load(argv)
  config = pretrained.resolve(config)  # a pretrained init_from supplies the architecture
  config_validate.validate_config(config)  # before any device is touched
  flags = parse_flags(rest)
  if "workdir" not in flags:
    raise UserError("missing --workdir=DIR (where checkpoints and metrics go)")
  devices.configure_cpu_devices(config.perf.cpu_devices)  # before JAX starts its backend
  devices.init_distributed(flags)
  if config.compress.recipe:  # the config compresses a trained run (configs/sst2/minilm_int8.py)
    return compress_run(config, os.path.abspath(flags["workdir"]))
  return train_and_evaluate(config, os.path.abspath(flags["workdir"]))


if __name__ == "__main__":
  main(sys.argv[1:])
