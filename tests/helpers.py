"""Shared test utilities: run the real trainer on a tiny config, process groups, decoding."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "lm", "shakespeare_char.py")

# A model small enough that a few steps take well under a second.
TINY = {
    "model.num_layers": "1", "model.num_heads": "2", "model.embed_dim": "16",
    "model.mlp_dim": "32", "seq_len": "16", "batch_size": "8", "eval_batch_size": "512",
    "log_every": "1", "eval_every": "5", "checkpoint_every": "5",
    "optimizer.warmup_steps": "2",
}


def xla_flags(devices: int) -> str:
  """This run's XLA_FLAGS (the user's, if any) with `devices` CPU devices."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  return f"--xla_force_host_platform_device_count={devices} {flags.strip()}".strip()


def tiny_args(workdir: str, raw_dir: str, tfds_dir: str, **overrides: str) -> list[str]:
  cfg = dict(TINY, **{"data.raw_dir": raw_dir, "data.tfds_dir": tfds_dir})
  cfg.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
  return [f"--config={QUICKSTART}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in cfg.items()]


def run_train_subprocess(args: list[str], env: dict | None = None, devices: int = 1,
                         timeout: int = 300) -> subprocess.CompletedProcess:
  full_env = dict(os.environ, **(env or {}))
  full_env["XLA_FLAGS"] = xla_flags(devices)
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "reparam_jax.train", *args], env=full_env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_process_group(argvs: list[list[str]], devices_each: int, envs: list[dict] | None = None,
                      timeout: float = 420) -> list[str]:
  """Runs `python ARGV` once per entry as one group (e.g. the processes of one
  jax.distributed run) with `devices_each` CPU devices each; their outputs.

  Fails, showing every process's output, unless all exit 0 within `timeout`.
  """
  procs = []
  for i, argv in enumerate(argvs):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices_each),
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **((envs or [{}] * len(argvs))[i]))
    procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + timeout
  outs: list[str | None] = [None] * len(procs)
  try:
    for i, p in enumerate(procs):
      outs[i] = p.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
  except subprocess.TimeoutExpired:
    pass  # a hung group: reported below with every process's output
  finally:
    for p in procs:
      p.kill()
  # Retrying communicate() after a timeout loses no output.
  outs = [out if out is not None else p.communicate()[0] for p, out in zip(procs, outs)]
  report = "\n".join(f"----- process {i} (exit {p.returncode}) -----\n{out}"
                     for i, (p, out) in enumerate(zip(procs, outs)))
  assert all(p.returncode == 0 for p in procs), report
  return outs


def tensorboard_scalars(logdir: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, int]]:
  """Scalars as TensorBoard shows them, (step, value) in file order, and raw counts per tag.

  Reads every event file in name (= creation time) order and applies
  TensorBoard's purge rule: a `SessionLog.START` event at step s discards
  earlier events at steps ≥ s (what a resumed run's `purge_step` writes).
  """
  import struct

  from tensorboardX.proto import event_pb2

  shown: dict[str, list[tuple[int, float]]] = {}
  raw: dict[str, int] = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4  # length, its crc, payload, payload crc
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        for tag in shown:
          shown[tag] = [(s, v) for s, v in shown[tag] if s < event.step]
      for value in event.summary.value:
        raw[value.tag] = raw.get(value.tag, 0) + 1
        shown.setdefault(value.tag, []).append((event.step, value.simple_value))
  return shown, raw


def greedy_cached(model, params, ids, steps: int):
  """Greedy tokens [B, steps] of a decoder model through its decode cache (prompt `ids`
  in one call, then one token per call), and the last call's logits."""
  B, P = ids.shape
  slots = jnp.zeros((B, P + steps), jnp.int32)
  cache = model.init(jax.random.key(0), slots, decode=True)["cache"]
  out, mut = model.apply({"params": params, "cache": cache}, ids, decode=True, mutable=["cache"])
  tokens = [jnp.argmax(out["logits"][:, -1], -1)]
  for step in range(steps - 1):
    position = jnp.full((B, 1), P + step, jnp.int32)
    out, mut = model.apply({"params": params, **mut}, tokens[-1][:, None], decode=True,
                           positions_BxL=position, mutable=["cache"])
    tokens.append(jnp.argmax(out["logits"][:, -1], -1))
  return np.stack(tokens, 1), out["logits"]


LABELLED_WORDS = ["good", "bad", "fine", "awful", "film", "plot", "acting", "very", "not", "the"]


def tiny_labelled_corpus(folder, train: int = 256, dev: int = 300,
                        made_up_words: int = 0) -> dict[str, str]:
  """`train.jsonl` and `dev.jsonl` of short sentences labelled by whether "good" occurs;
  the `data.source` / `data.eval_source` config overrides that read them.  A classifier
  run on these needs no SST-2 (no 67k-sentence tokenizer fit and encoding).
  `made_up_words` random 6-letter words join the vocabulary (for a tokenizer of a few
  hundred pieces, where the size of the embedding matters)."""
  import json  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  made_up = ["".join(np.random.default_rng(i).choice(letters, 6)) for i in range(made_up_words)]
  vocabulary = LABELLED_WORDS + made_up
  for name, n, seed in (("train", train, 0), ("dev", dev, 1)):
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
      for _ in range(n):
        words = list(rng.choice(vocabulary, int(rng.integers(3, 12))))
        f.write(json.dumps({"sentence": " ".join(words), "label": int("good" in words)}) + "\n")
  return {"data.source": f"jsonl:{folder}/train.jsonl", "data.eval_source": f"jsonl:{folder}/dev.jsonl"}
