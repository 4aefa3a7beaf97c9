r"""SST-2 fine-tuning step of the pretrained MiniLM against transformers', same batches.

  REPARAM_DATA_DIR=../shared/data python -m bench.minilm_vs_torch [--batches 24 --rounds 6]

JAX: the trainer's own jitted step (bench/lm_step.StepRunner) for
configs/sst2/minilm_finetune.py, on the classification task's real
length-bucketed SST-2 batches (batch 32, padded to 16/32/48/64 tokens).
PyTorch: bench/minilm_torch_peer.py (transformers' BertForSequenceClassification
from the same folder) in the interpreter that has torch, on the same batches
(handed over in an .npz).  The two alternate in chunks, the order flipping
every round, so drift in the machine's load falls on both; each side's figure
is the median over the same batch indices.  The JAX step compiles once per
padded length: that is reported apart, not timed as steps.  Goal (issues 18
and 36): JAX/PyTorch ≤ 0.9.

`--optax` times the JAX step with `optimizer.fused=False` (the plain optax
chain) instead; `--phases` times, on real batches padded to 32 tokens, the
forward, the forward+backward and the whole step, fused and plain
(bench/breakdown.py), without the PyTorch side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import types
from typing import Any, Sequence

import numpy as np

from bench import breakdown, peer_process
from bench.lm_step import StepRunner
from reparam_jax.config.load import load_config_file
from reparam_jax.hf import pretrained
from reparam_jax.tasks.classify import ClassificationTask
from reparam_jax.training import steps
from reparam_jax.training.devices import configure_cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "sst2", "minilm_finetune.py")
PEER = os.path.join(REPO, "bench", "minilm_torch_peer.py")


def compare(n_batches: int, rounds: int, chunk: int, python: str,
            cpu_devices: int | None = None, fused: bool = True) -> dict[str, Any]:
  config = pretrained.resolve(load_config_file(CONFIG))
  with config.unlocked():
    if cpu_devices is not None:
      config.perf.cpu_devices = cpu_devices
    config.optimizer.fused = fused
  configure_cpu_devices(config.perf.cpu_devices)
  task = ClassificationTask(config, workdir=None)
  stream = task.train_iterator()
  host = [next(stream) for _ in range(n_batches)]
  runner = StepRunner(config, task=task, batches=host)
  lengths = [b["ids"].shape[1] for b in host]
  compile_s = {}
  for i, length in enumerate(lengths):  # the first step at each padded length compiles
    if length not in compile_s:
      t0 = time.perf_counter()
      runner.run(i)
      compile_s[length] = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    npz = os.path.join(tmp, "batches.npz")
    np.savez(npz, **{f"{k}_{i}": v for i, b in enumerate(host) for k, v in
                     (("ids", b["ids"]), ("mask", b["padding_mask"].astype(np.int64)),
                      ("label", b["label"][:, 0]))})
    peer = peer_process.TorchPeer(python, PEER)
    try:
      info = peer.call(cmd="init", folder=config.init_from, batches=npz,
                       threads=os.cpu_count(), seed=0)
      jax_params = steps.count_params(runner.state.params)
      if info["params"] != jax_params:  # then the two would time different models
        raise RuntimeError(f"transformers' model has {info['params']:,} parameters, ours "
                           f"{jax_params:,}: they are not the same model")
      peer.call(cmd="steps", start=0, n=2)  # warm-up
      wall: dict[str, dict[int, list[float]]] = {"jax": {}, "torch": {}}
      step = 0
      for r in range(rounds):
        for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
          if side == "torch":
            out = peer.call(cmd="steps", start=step, n=chunk)
            for j, s in enumerate(out["wall_s"]):
              wall["torch"].setdefault((step + j) % n_batches, []).append(s)
            continue
          for j in range(chunk):
            t0 = time.perf_counter()
            runner.run(step + j)
            wall["jax"].setdefault((step + j) % n_batches, []).append(time.perf_counter() - t0)
        step += chunk
    finally:
      peer.close()
  both = sorted(set(wall["jax"]) & set(wall["torch"]))
  ms = {side: 1e3 * statistics.median([s for i in both for s in wall[side][i]])
        for side in wall}
  return {"jax_ms": ms["jax"], "torch_ms": ms["torch"], "ratio": ms["jax"] / ms["torch"],
          "steps_each": sum(len(wall["jax"][i]) for i in both), "rounds": rounds,
          "padded_lengths": sorted(set(lengths)), "jax_compile_s": compile_s,
          "torch": info["torch"], "transformers": info["transformers"],
          "params": info["params"], "threads": info["threads"],
          "jax_devices": config.perf.cpu_devices or 1, "fused": config.optimizer.fused}


def phases(n_batches: int, rounds: int, length: int = 32) -> list[dict[str, Any]]:
  """Where the JAX step goes (bench/breakdown.py) on `n_batches` real batches padded to
  `length`, with the step of `optimizer.fused=False` (the plain optax chain) alongside."""
  config = pretrained.resolve(load_config_file(CONFIG))
  configure_cpu_devices(config.perf.cpu_devices)
  task = ClassificationTask(config, workdir=None)
  stream = task.train_iterator()
  host = []
  while len(host) < n_batches:
    batch = next(stream)
    if batch["ids"].shape[1] == length:
      host.append(batch)
  plain = config.copy_and_resolve_references()
  plain.optimizer.fused = False
  unfused = StepRunner(plain, task=task, batches=host)
  suite = types.SimpleNamespace(steps=rounds, warmup=1, speed_seconds=0.0)
  return breakdown.step_breakdown(StepRunner(config, task=task, batches=host), suite,
                                  {"train step, optimizer.fused=False": unfused.run})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=24, help="distinct SST-2 batches")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--chunk", type=int, default=4, help="steps per side per round")
  parser.add_argument("--torch_python", default=None)
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="perf.cpu_devices for the JAX side (default: the config's)")
  parser.add_argument("--phases", action="store_true",
                      help="instead: where the JAX step goes (forward, backward, optimizer; "
                      "fused and plain optax) on --batches batches padded to 32 tokens")
  parser.add_argument("--optax", action="store_true",
                      help="the JAX step with optimizer.fused=False (the plain optax chain)")
  args = parser.parse_args(argv)
  if args.phases:
    rows = phases(args.batches, args.rounds)
    for row in rows:
      print(f"  {row['phase']:<48} {row['wall_ms']:8.1f} ms  {row['share']:6.1%}")
    print(json.dumps(rows))
    return {"phases": rows}
  python = peer_process.torch_python(args.torch_python)
  if python is None:
    parser.error("no interpreter with torch; run `make test-peers` once (it builds .venv-py311) "
                 "or pass --torch_python")
  out = compare(args.batches, args.rounds, args.chunk, python, args.cpu_devices,
                not args.optax)
  print(f"MiniLM SST-2 fine-tuning step (batch 32, lengths {out['padded_lengths']}), median over "
        f"{out['steps_each']} steps each:")
  print(f"  reparam_jax {out['jax_ms']:.1f} ms on {out['jax_devices']} CPU device(s) "
        f"(optimizer.fused={out['fused']})   transformers {out['torch_ms']:.1f} ms "
        f"(torch {out['torch']}, {out['threads']} threads)   ratio {out['ratio']:.3f}")
  print("  JAX compile per padded length (s): "
        + ", ".join(f"{k}: {v:.1f}" for k, v in sorted(out["jax_compile_s"].items())))
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
