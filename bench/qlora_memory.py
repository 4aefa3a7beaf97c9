r"""Bytes of a QLoRA base (q4) against bf16, int8 and f32, stored and in device memory.

  REPARAM_DATA_DIR=../shared/data python -m bench.qlora_memory [--rank 8] [--no-step]
      [--no-checkpoint]

Model: the pretrained all-MiniLM-L6-v2 of configs/sst2/minilm_qlora.py; the frozen
base is every block matrix (minilm.BLOCK_KERNELS, 36 matrices, 10.6M weights).
(a) stored: bytes of those matrices in the params tree as bf16 and f32 dense, as
    q4 nf4 (packed codes + f32 block absmax), q4 nf4 with double quantization,
    and int8 qweight; ratios to bf16 (goal ≤ 0.3).
(b) device: the trainer's own jitted SST-2 train step (bench/lm_step.StepRunner,
    one real batch) for LoRA r on a bf16 base, an f32 base (what a LoRA run here
    holds: params are f32) and a q4 base: bytes of the placed params and of all
    live device buffers, and the compiled step's memory_analysis() (arguments,
    outputs, temporaries).
(c) the params checkpoint (orbax, `checkpoint.save_params`) on disk per variant.
Prints a table per part and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from configs.sst2 import minilm
from reparam_jax.config.load import load_config_file
from reparam_jax.hf import pretrained
from reparam_jax.pytree.paths import dict_leaves
from reparam_jax.reparam.rules import Plan, parse_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "sst2", "minilm_qlora.py")
STORED = {  # label → spec of the frozen base (None: dense in that dtype)
    "bf16 dense": None, "f32 dense": None, "q4 nf4": "q4(format=nf4, block_size=64)",
    "q4 nf4 + double quant": "q4(format=nf4, block_size=64, double_quant=True)",
    "int8 qweight": "qweight(bits=8)",
}


def _nbytes(tree: Any) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def _config(rules: tuple) -> Any:
  config = pretrained.resolve(load_config_file(CONFIG))
  with config.unlocked():
    config.reparam.rules = rules
  return config


def stored_bytes(config: Any) -> tuple[list[dict[str, Any]], int]:
  """Part (a): bytes of the base matrices as each storage form holds them."""
  dense = pretrained.load_params(config.init_from)
  pattern = config.reparam.rules[0][0]
  plan = Plan.from_config({"rules": ((pattern, "identity"),)})
  mats = [np.asarray(w) for path, w in dict_leaves(dense) if plan.match(path)]
  n = sum(w.size for w in mats)
  rows = []
  for label, spec in STORED.items():
    if spec is None:
      b = n * (2 if label.startswith("bf16") else 4)
    else:
      node = parse_spec(spec)
      b = sum(_nbytes(node.from_dense(jnp.asarray(w, jnp.float32))) for w in mats)
    rows.append({"form": label, "bytes": b, "bits_per_weight": 8 * b / n})
  for r in rows:
    r["vs_bf16"] = r["bytes"] / rows[0]["bytes"]
  return rows, n


def _base_leaves(params: Any) -> list[Any]:
  return [x for path, x in dict_leaves(params) if "/base/" in f"/{path}/"]


def device_bytes(rank: int, step: bool, ckpt: bool) -> list[dict[str, Any]]:
  """Parts (b) and (c): the train state of each LoRA variant, placed and compiled."""
  from bench.lm_step import StepRunner  # noqa: PLC0415
  from reparam_jax.rundir import checkpoint  # noqa: PLC0415
  from reparam_jax.tasks.classify import ClassificationTask  # noqa: PLC0415

  lora = f"lora(rank={rank}, alpha={2 * rank})"
  variants = {"bf16 base + LoRA": lora, "f32 base + LoRA": lora,
              "q4 nf4 base + LoRA": f"q4(format=nf4, block_size=64)|{lora}",
              "q4 nf4 dq base + LoRA": f"q4(format=nf4, block_size=64, double_quant=True)|{lora}"}
  task, batch, rows = None, None, []
  for label, spec in variants.items():
    config = _config(((minilm.BLOCK_KERNELS, spec),))
    if task is None:
      task = ClassificationTask(config, workdir=None)
      batch = next(task.train_iterator())
    runner = StepRunner(config, task=task, batches=[batch])
    if label.startswith("bf16"):  # the frozen base in bf16; adapters, head, the rest f32
      params = runner.state.params
      cast = jax.tree_util.tree_map_with_path(
          lambda kp, x: x.astype(jnp.bfloat16) if any(getattr(k, "key", None) == "base"
                                                      for k in kp) else x, params)
      runner.state = runner.state.replace(params=cast)
    jax.block_until_ready(runner.state)
    gc.collect()
    params = runner.state.params
    row = {"variant": label, "base_bytes": _nbytes(_base_leaves(params)),
           "params_bytes": _nbytes(params), "opt_state_bytes": _nbytes(runner.state.opt_state),
           "live_bytes": int(sum(a.nbytes for a in jax.live_arrays()))}
    if ckpt:
      with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save_params(os.path.join(tmp, "params"), jax.device_get(params))
        row["checkpoint_bytes"] = sum(os.path.getsize(os.path.join(d, f))
                                      for d, _, fs in os.walk(tmp) for f in fs)
    if step:
      ma = runner.lower().compile().memory_analysis()
      row.update(argument_bytes=int(ma.argument_size_in_bytes),
                 output_bytes=int(ma.output_size_in_bytes),
                 temp_bytes=int(ma.temp_size_in_bytes), alias_bytes=int(ma.alias_size_in_bytes))
      row["loss"] = runner.run(0)  # donates the state: `params` is gone after this
    rows.append(row)
    del runner, params
    gc.collect()
  ref = rows[0]
  for r in rows:
    for k in ("base_bytes", "params_bytes", "live_bytes", "temp_bytes", "checkpoint_bytes"):
      if k in r and ref.get(k):
        r[f"{k}_vs_bf16"] = r[k] / ref[k]
  return rows


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
  def fmt(v: Any) -> str:
    if isinstance(v, float):
      return f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)
  cells = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in cells]
  return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the device-memory variants")
  ap.add_argument("--no-device", action="store_true", help="only part (a): no train state")
  ap.add_argument("--no-step", action="store_true", help="skip compiling the train step")
  ap.add_argument("--no-checkpoint", action="store_true", help="skip writing checkpoints")
  args = ap.parse_args(argv)
  stored, n = stored_bytes(_config(((minilm.BLOCK_KERNELS, "identity"),)))
  print(f"(a) frozen base as stored: {n:,} weights in the block matrices")
  print(_table(stored, ["form", "bytes", "bits_per_weight", "vs_bf16"]))
  out: dict[str, Any] = {"weights": n, "stored": stored, "device": jax.devices()[0].platform}
  if not args.no_device:
    dev = device_bytes(args.rank, not args.no_step, not args.no_checkpoint)
    print(f"\n(b) device memory, LoRA r={args.rank} train state ({out['device']})")
    print(_table(dev, ["variant", "base_bytes", "base_bytes_vs_bf16", "params_bytes",
                       "params_bytes_vs_bf16", "live_bytes", "argument_bytes", "output_bytes",
                       "temp_bytes", "temp_bytes_vs_bf16"]))
    if not args.no_checkpoint:
      print("\n(c) params checkpoint on disk")
      print(_table(dev, ["variant", "checkpoint_bytes", "checkpoint_bytes_vs_bf16"]))
    out["train_state"] = dev
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
