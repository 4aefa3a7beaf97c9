"""The quick-start train step against nanoGPT's PyTorch step on the same model and machine.

The JAX side is the trainer's own jitted step (bench/lm_step.py, as the
quick start runs it: `perf.cpu_devices` CPU devices); the PyTorch side is
bench/torch_peer.py in a second process, in the interpreter that has torch
(by default the test environment's `.venv-py311/bin/python`; `--torch_python`
or `REPARAM_TORCH_PYTHON` to change).  Only one of the two runs at a time:
they alternate in chunks of steps, the order flipping every round, so slow
drift of the machine's load falls on both alike.  Each side uses every core
(torch: `torch.set_num_threads(os.cpu_count())`).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from typing import Any

from bench import peer_process, speed
from bench.suites import Suite
from reparam_jax.training import steps

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
TorchPeer = functools.partial(peer_process.TorchPeer, script=PEER)
torch_python = peer_process.torch_python


def compare(suite: Suite, python: str, rounds: int, chunk: int) -> dict[str, Any]:
  """Median step (wall and CPU) of each side over `rounds` alternating chunks of `chunk` steps."""
  overrides, vocab = next(iter(suite.speed_models.values()))
  jax_runner = speed.runner(overrides, vocab)
  cfg = jax_runner.config
  peer = TorchPeer(python)
  try:
    info = peer.call(cmd="init", layers=cfg.model.num_layers, heads=cfg.model.num_heads,
                     width=cfg.model.embed_dim, seq=cfg.seq_len, batch=cfg.batch_size,
                     vocab=vocab, threads=os.cpu_count(), seed=0)
    jax_params = steps.count_params(jax_runner.state.params)
    if info["params"] != jax_params:  # then the two would time different models
      raise RuntimeError(f"the PyTorch peer has {info['params']:,} parameters, the JAX model "
                         f"{jax_params:,}: they are not the same model")
    for i in range(suite.warmup + 1):  # the first JAX call compiles
      jax_runner.run(i)
    peer.call(cmd="steps", n=suite.warmup + 1)
    wall: dict[str, list[float]] = {"jax": [], "torch": []}
    cpu: dict[str, list[float]] = {"jax": [], "torch": []}
    step = 0
    for r in range(rounds):
      for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
        if side == "torch":
          out = peer.call(cmd="steps", n=chunk)
          wall["torch"] += out["wall_s"]
          cpu["torch"] += out["cpu_s"]
          continue
        for _ in range(chunk):
          c0, t0 = time.process_time(), time.perf_counter()
          jax_runner.run(step)
          wall["jax"].append(time.perf_counter() - t0)
          cpu["jax"].append(time.process_time() - c0)
          step += 1
  finally:
    peer.close()
  ms = {side: 1e3 * statistics.median(v) for side, v in wall.items()}
  cpu_ms = {side: 1e3 * statistics.median(v) for side, v in cpu.items()}
  return {"jax_ms": ms["jax"], "torch_ms": ms["torch"], "ratio": ms["jax"] / ms["torch"],
          "jax_cpu_ms": cpu_ms["jax"], "torch_cpu_ms": cpu_ms["torch"],
          "steps_each": len(wall["jax"]), "rounds": rounds, "torch": info["torch"],
          "torch_threads": info["threads"], "torch_params": info["params"],
          "jax_params": jax_params,
          "jax_devices": jax_runner.mesh.size}
