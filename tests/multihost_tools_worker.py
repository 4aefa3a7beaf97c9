"""One process of tests/test_multihost_tools.py's group: the library's whole-checkpoint
steps with every array split over the processes; prints one JSON line of findings.

  python -m tests.multihost_tools_worker adapters COORDINATOR NUM_PROCESSES PROCESS_ID SRC OUT
  python -m tests.multihost_tools_worker peft COORDINATOR NUM_PROCESSES PROCESS_ID RUN BAD_RUN OUT
"""

import json
import sys

import jax
import jax.numpy as jnp

from configs.sst2 import minilm_lora
from reparam_jax.errors import UserError
from reparam_jax.hf import peft_run
from reparam_jax.reparam import Reparam, load_adapter, save_adapter
from reparam_jax.reparam.adapters import extract_adapter, insert_adapter
from reparam_jax.rundir import checkpoint, sharded
from reparam_jax.training import devices


def _start(coordinator: str, num_processes: str, process_id: str) -> None:
  devices.init_distributed({"coordinator_address": coordinator,
                            "num_processes": num_processes, "process_id": process_id})


def adapters(coordinator: str, num_processes: str, process_id: str, src: str, out: str) -> None:
  """Params and a LoRA adapter through load → convert → save → load, all split."""
  _start(coordinator, num_processes, process_id)
  params = checkpoint.load_params(src)
  rp = Reparam.from_config(minilm_lora.get_config().reparam)
  theta = sharded.apply_spread(lambda p: rp.from_dense(p, jax.random.key(0)), params)
  # B = 0 after from_dense: move every adapter leaf so that the round trip shows.
  adapter = sharded.apply_spread(
      lambda a: {k: v + 0.25 * jnp.arange(v.size, dtype=v.dtype).reshape(v.shape) / v.size
                 for k, v in a.items()}, extract_adapter(theta, rp))
  save_adapter(out, insert_adapter(theta, adapter), rp)
  loaded = load_adapter(out, theta)
  back = extract_adapter(loaded, rp)
  same = all(bool(jnp.array_equal(back[k], adapter[k])) for k in adapter)
  print(json.dumps({
      "process": jax.process_index(), "processes": jax.process_count(),
      "devices": jax.device_count(),
      "share_loaded": sharded.host_share(params),
      "share_adapter_loaded": sharded.host_share(back),
      "adapter_round_trip_exact": same,
      "adapter_leaves": len(adapter),
  }), flush=True)


def peft(coordinator: str, num_processes: str, process_id: str, run: str, bad_run: str,
         out: str) -> None:
  """`export_hf --peft_dir`'s library call on a LoRA/DoRA run, and on a run that trained a
  weight outside its adapters (which must be refused on every process)."""
  _start(coordinator, num_processes, process_id)
  summary = peft_run.export_run_adapter(run, out)
  try:
    peft_run.export_run_adapter(bad_run, out + "-bad")
    refused = ""
  except UserError as e:
    refused = str(e)
  print(json.dumps({"process": jax.process_index(), "modules": summary["modules"],
                    "tensors": summary["tensors"], "refused": refused}), flush=True)


if __name__ == "__main__":
  {"adapters": adapters, "peft": peft}[sys.argv[1]](*sys.argv[2:])
