r"""The trainer's step with scanned layers against the same step unrolled, and why.

  python -m bench.scan_vs_unrolled                  # quick-start LM and width 512 L4/L8, CPU
  python -m bench.scan_vs_unrolled --smoke          # tiny, seconds (tests/models)
  python -m bench.scan_vs_unrolled --gpu            # GPT-2 medium, bf16, ctx 1024, batch 8
  python -m bench.scan_vs_unrolled --unroll 1,2 --hlo_dir /tmp/hlo   # + the loop bodies

Every variant is the trainer's own jitted train step (bench/lm_step.py:
optimizer, shardings, donation) on synthetic tokens, compiled ahead of time,
then timed interleaved with its unrolled twin (bench/timing.py: rounds in
alternating order, medians).  For each model and `model.remat` the table has
the unrolled step and the scanned one at each `model.scan_unroll` (layers per
loop iteration), with the ratio scanned / unrolled of wall and CPU time.

It also reads each compiled program (`compiled.as_text()`, the optimized HLO)
and counts the data-movement ops — copy, dynamic-update-slice (DUS),
dynamic-slice, transpose, concatenate, pad — with the bytes each writes (a
DUS writes its update, the others their output), top-level and inside
fusions alike: `loop` counts those inside while-loop bodies times the loop's
trip count, `total` the whole program's per step.  `--hlo_dir` writes the
programs and each while body, to read the copies themselves.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

from bench.suites import lm_size

# Data movement: what a scan may add around the block's own compute.
MOVES = ("copy", "dynamic-update-slice", "dynamic-slice", "transpose", "concatenate", "pad")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

# The models: (overrides, vocabulary).  The quick start's own config (2 CPU devices,
# data parallel) and a width-512 model at 4 and 8 layers; GPT-2 medium for a GPU.
MODELS: dict[str, tuple[dict[str, Any], int]] = {
    "quickstart": ({}, 65),
    "w512-L4": (lm_size(4, 8, 512, 128, 8), 512),
    "w512-L8": (lm_size(8, 8, 512, 128, 8), 512),
}
GPU_MODELS = {"gpt2-medium": ({**lm_size(24, 16, 1024, 1024, 8, "bfloat16"),
                               "model.attention": "cudnn"}, 50304)}
SMOKE_MODELS = {"tiny": (lm_size(2, 2, 32, 16, 4), 65)}


# --- HLO reading -------------------------------------------------------------------------

@dataclasses.dataclass
class Instr:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  calls: list[str]  # computations it calls (fusion, while body/condition, to_apply ...)
  text: str


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(")
_CALLS = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=\{?([^}]*?)\}?(?:,\s|$)")


def parse_hlo(text: str) -> tuple[dict[str, list[Instr]], str]:
  """{computation: instructions} of an HLO module's text, and the entry's name."""
  comps: dict[str, list[Instr]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m and line.rstrip().endswith("{"):
        current = m.group(1)
        comps[current] = []
        if line.startswith("ENTRY"):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    args = rest.split(")", 1)[0] if not rest.startswith("(") else ""
    operands = re.findall(r"%([\w.\-]+)", args)
    calls = [c.strip().lstrip("%") for grp in _CALLS.findall(rest) for c in grp.split(",")
             if c.strip()]
    comps[current].append(Instr(name, shape, opcode, operands, calls, line.strip()))
  return comps, entry


def shape_bytes(shape: str) -> int:
  """Bytes of an array shape like `f32[4,128]{1,0}` (a tuple's: its arrays')."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def trip_count(instr: Instr) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.text)
  return int(m.group(1)) if m else 1


def count_moves(comps: dict[str, list[Instr]], entry: str) -> dict[str, Any]:
  """Data-movement ops of the program, per step: {total, loop, loops}.

  Walks from the entry through every called computation, multiplying by the
  trip counts of the while loops on the way; `loop` is the part inside loops.
  """
  total: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0])
  loop: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0])
  loops: list[dict[str, Any]] = []

  def walk(comp: str, times: int, in_loop: bool, seen: tuple[str, ...]) -> None:
    shapes = {i.name: i.shape for i in comps.get(comp, [])}
    for ins in comps.get(comp, []):
      if ins.opcode in MOVES:
        written = ins.shape
        if ins.opcode == "dynamic-update-slice" and len(ins.operands) > 1:
          written = shapes.get(ins.operands[1], ins.shape)
        for table in ([total, loop] if in_loop else [total]):
          table[ins.opcode][0] += times
          table[ins.opcode][1] += times * shape_bytes(written)
      if ins.opcode == "while":
        m = re.search(r"body=%([\w.\-]+)", ins.text)
        body = m.group(1) if m else None
        n = trip_count(ins)
        loops.append({"name": ins.name, "body": body, "trips": n * times,
                      "op": _op_name(ins.text)})
        if body and body not in seen:
          walk(body, times * n, True, seen + (body,))
        continue
      for c in ins.calls:
        if c in comps and c not in seen and ins.opcode in ("fusion", "call", "conditional",
                                                           "async-start", "custom-call"):
          walk(c, times, in_loop, seen + (c,))

  walk(entry, 1, False, (entry,))
  as_dict = lambda t: {k: {"count": int(v[0]), "mib": v[1] / 2**20} for k, v in sorted(t.items())}  # noqa: E731
  return {"total": as_dict(total), "loop": as_dict(loop), "loops": loops}


def _op_name(text: str) -> str:
  m = re.search(r'op_name="([^"]*)"', text)
  return m.group(1) if m else ""


def loop_bodies(text: str) -> dict[str, str]:
  """{while body name: its text} of a compiled program's top-level loops."""
  comps, entry = parse_hlo(text)
  lines = text.splitlines()
  out = {}
  for ins in comps.get(entry, []):
    m = re.search(r"body=%([\w.\-]+)", ins.text) if ins.opcode == "while" else None
    if m:
      start = next(k for k, line in enumerate(lines) if line.startswith(f"%{m.group(1)} "))
      end = next(k for k in range(start, len(lines)) if lines[k].startswith("}"))
      out[m.group(1)] = "\n".join(lines[start:end + 1])
  return out


# --- timing ------------------------------------------------------------------------------

def build(overrides: dict[str, Any], vocab: int, devices: list[Any] | None):
  from bench.lm_step import StepRunner, quickstart_config

  config = quickstart_config(**overrides)
  runner = StepRunner(config, vocab, devices=devices)
  t0 = time.perf_counter()
  compiled = runner.lower().compile()
  facts: dict[str, Any] = {"compile_s": time.perf_counter() - t0}
  runner.step_fn = compiled  # the timed step is exactly the compiled one
  text = compiled.as_text()
  comps, entry = parse_hlo(text)
  facts["moves"] = count_moves(comps, entry)
  facts["first_loss"] = runner.run(0)
  return runner, facts, text


def compare(models: dict[str, tuple[dict[str, Any], int]], remats: list[str], unrolls: list[int],
            steps: int, warmup: int, hlo_dir: str | None, devices: list[Any] | None,
            extra: dict[str, Any]) -> list[dict[str, Any]]:
  """Rows: one per (model, remat, variant) with medians and ratios to the unrolled step."""
  from bench import timing

  rows = []
  for model, (over, vocab) in models.items():
    for remat in remats:
      variants = {"unrolled": {"model.scan_layers": False}}
      for k in unrolls:
        # scan_unroll only where it is not the default: the bench runs on older commits too.
        variants[f"scanned, unroll {k}"] = {"model.scan_layers": True,
                                            **({"model.scan_unroll": k} if k != 1 else {})}
      runners, facts = {}, {}
      for label, v in variants.items():
        runners[label], facts[label], text = build(
            {**over, **extra, "model.remat": remat, **v}, vocab, devices)
        if hlo_dir:
          tag = re.sub(r"[^\w]+", "_", f"{model}_{remat}_{label}")
          os.makedirs(hlo_dir, exist_ok=True)
          with open(os.path.join(hlo_dir, f"{tag}.hlo.txt"), "w") as f:
            f.write(text)
          for k, (name, body) in enumerate(loop_bodies(text).items()):
            with open(os.path.join(hlo_dir, f"{tag}.while{k}.txt"), "w") as f:
              f.write(body)
      times = timing.interleaved({k: r.run for k, r in runners.items()}, steps, warmup)
      base = times["unrolled"]
      for label in variants:
        t, f = times[label], facts[label]
        rows.append({"model": model, "remat": remat, "variant": label,
                     "wall_ms": t["wall_ms"], "cpu_ms": t["cpu_ms"],
                     "wall_ratio": t["wall_ms"] / base["wall_ms"],
                     "cpu_ratio": t["cpu_ms"] / base["cpu_ms"],
                     "compile_s": f["compile_s"], "first_loss": f["first_loss"],
                     "moves": f["moves"]})
      del runners
  return rows


def _moves_cell(moves: dict[str, Any], key: str) -> str:
  short = {"copy": "copy", "dynamic-update-slice": "DUS", "dynamic-slice": "DS",
           "transpose": "transpose", "concatenate": "concat", "pad": "pad"}
  t = moves[key]
  return ", ".join(f"{short[k]} {v['count']}/{v['mib']:.1f}" for k, v in t.items()) or "—"


def print_rows(rows: list[dict[str, Any]]) -> None:
  print("| model | remat | step | wall ms | CPU ms | wall × unrolled | CPU × unrolled | "
        "compile s | first loss | moves in loops (n/MiB a step) | moves, whole step |")
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")
  for r in rows:
    print(f"| {r['model']} | {r['remat']} | {r['variant']} | {r['wall_ms']:.2f} | "
          f"{r['cpu_ms']:.2f} | {r['wall_ratio']:.3f} | {r['cpu_ratio']:.3f} | "
          f"{r['compile_s']:.1f} | {r['first_loss']:.5f} | {_moves_cell(r['moves'], 'loop')} | "
          f"{_moves_cell(r['moves'], 'total')} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (CI)")
  parser.add_argument("--gpu", action="store_true", help="GPT-2 medium, bf16, on one device")
  parser.add_argument("--models", default="", help="comma list of the models to run")
  parser.add_argument("--remat", default="none,full", help="model.remat values, comma list")
  parser.add_argument("--unroll", default="1,2", help="model.scan_unroll values, comma list")
  parser.add_argument("--steps", type=int, default=0, help="timed rounds (0: by model set)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--hlo_dir", default="", help="write each program and its loop bodies")
  parser.add_argument("--json", default="", help="write the rows to this file")
  args = parser.parse_args(argv)

  from reparam_jax.training.devices import configure_cpu_devices

  models = SMOKE_MODELS if args.smoke else GPU_MODELS if args.gpu else MODELS
  if args.models:
    known = {**MODELS, **GPU_MODELS, **SMOKE_MODELS}
    models = {m: known[m] for m in args.models.split(",")}
  if not args.gpu:
    configure_cpu_devices(2)  # as the quick start trains: one device per core
  import jax

  # One accelerator; on a CPU the quick start's two devices (a test process may have more).
  devices = jax.devices()[:1] if args.gpu else jax.devices()[:2]
  extra = {"perf.cpu_devices": 0} if args.gpu else {}
  steps = args.steps or (3 if args.smoke else 20)
  rows = compare(models, args.remat.split(","), [int(k) for k in args.unroll.split(",")],
                 steps, 1 if args.smoke else args.warmup, args.hlo_dir or None, devices, extra)
  from bench.timing import cpu_model

  kind = jax.devices()[0].device_kind if args.gpu else cpu_model()
  print(f"# {kind}, jax {jax.__version__}, {steps} rounds, medians")
  print_rows(rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
