"""Devices: the CPU backend's device count, and multi-host start-up (`jax.distributed`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

import jax

from reparam_jax.errors import UserError


def local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
  """The GPUs this process drives, from `REPARAM_LOCAL_DEVICE_IDS=0,1,...` (or None).

  Set by launch/slurm.sbatch for one process per node: without it JAX's SLURM
  detection gives each process only the GPU numbered SLURM_LOCALID.
  """
  text = environ.get("REPARAM_LOCAL_DEVICE_IDS", "").strip()
  if not text:
    return None
  try:
    ids = [int(x) for x in text.split(",")]
  except ValueError:
    ids = []
  if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
    raise UserError(f"REPARAM_LOCAL_DEVICE_IDS={text!r} must list distinct device numbers "
                    "like 0,1,2,3 (or be unset for one device per process)")
  return ids


def configure_cpu_devices(count: int) -> None:
  """Starts the CPU backend as `count` devices (config.perf.cpu_devices; 0 = leave it).

  A small model's kernels are too small for one device to spread well over
  the intra-op threads; one device per core, data parallel, keeps each core
  on its own half of the batch (0.85x the quick-start step on 2 cores, but
  1.45x slower at width 1024: docs/performance.md).  An explicit
  --xla_force_host_platform_device_count wins (tests set it).
  """
  if count <= 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX already started in this process (e.g. a second in-process run)
    started = len(jax.local_devices(backend="cpu"))
    if started != count:
      print(f"warning: config.perf.cpu_devices={count} ignored: JAX's CPU backend already "
            f"started with {started} devices", file=sys.stderr)


def init_distributed(flags: Mapping[str, str]) -> None:
  """`jax.distributed.initialize` from flags, or from the cluster's environment.

  On SLURM, TPU pods and similar, `--distributed` alone suffices: JAX reads
  the coordinator, process count and id from the environment.
  """
  device_ids = local_device_ids(os.environ)
  if "coordinator_address" in flags:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=flags["coordinator_address"],
                               num_processes=int(flags["num_processes"]),
                               process_id=int(flags["process_id"]),
                               local_device_ids=device_ids)
  elif flags.get("distributed") == "true":
    jax.distributed.initialize(local_device_ids=device_ids)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  """The trainer's multi-host flags, for a tool's (convert, export_hf, ...) parser."""
  group = parser.add_argument_group("multi-host (every process runs the same command)")
  group.add_argument("--distributed", action="store_true",
                     help="jax.distributed.initialize() from the cluster's environment "
                     "(SLURM, TPU pods)")
  group.add_argument("--coordinator_address", help="HOST:PORT of process 0; with "
                     "--num_processes and --process_id")
  group.add_argument("--num_processes", type=int)
  group.add_argument("--process_id", type=int)


def init_distributed_from_args(args: argparse.Namespace) -> None:
  """`init_distributed` from the flags `add_distributed_flags` declared."""
  by_hand = (args.coordinator_address, args.num_processes, args.process_id)
  if any(v is not None for v in by_hand) and any(v is None for v in by_hand):
    raise UserError("--coordinator_address, --num_processes and --process_id go together "
                    "(or pass --distributed alone on SLURM / TPU pods)")
  flags = {"distributed": "true"} if args.distributed else {}
  if args.coordinator_address is not None:
    flags.update(coordinator_address=args.coordinator_address,
                 num_processes=str(args.num_processes), process_id=str(args.process_id))
  init_distributed(flags)
