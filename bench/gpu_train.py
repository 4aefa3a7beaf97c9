r"""The train step on one accelerator at GPT-2-medium size: MFU, overheads, profile.

  python -m bench.gpu_train                        # GPT-2 medium shape, bf16, T1024, B8
  python -m bench.gpu_train --size tiny            # the machinery on a CPU (tests/perf)

Issue 21's GPU half. Every variant is the trainer's own jitted train step
(bench/lm_step.py: optimizer, shardings, donation) on synthetic tokens,
compiled ahead of time (the compile seconds are reported), then timed
interleaved with the others, medians:

* phase 1, scanned layers (`model.scan_layers=True`): dense, the identity
  interceptor (every parameter through the reparameterization machinery,
  W = θ), low-rank W = U Vᵀ at rank width/4 on every projection, each with
  XLA's attention and with cuDNN's fused attention (`model.attention=cudnn`);
* phase 2: dense scanned against dense unrolled (the scan's own cost);
* phase 3: a profile of the fastest dense step (`jax.profiler`, its perfetto
  trace summed per XLA op), the top costs printed.

MFU = model FLOPs per token (reparam_jax.perf.flops: 6N + attention, N
counted from the parameter tree, so low-rank counts its factors) × tokens/s
over the device's published dense bf16 peak (perf/peaks.py).  The first
step's loss of each variant is printed: same seed and batch, so the dense
and identity losses must agree, and the two attention kernels to bf16
rounding.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import time
import traceback
from typing import Any

import jax

from bench import timing
from bench.lm_step import StepRunner, quickstart_config
from bench.reparam_bench import nbytes
from bench.speed import speed_row
from bench.suites import lm_size
from bench.table import markdown
from reparam_jax.config.base import use_preset
from reparam_jax.perf.peaks import device_peak_flops

# Every projection kernel of every block, unrolled (`block_i/...`) or scanned.
PROJECTIONS = r"(block_\d+|blocks)/(attn|mlp)/\w+/kernel"

# (model overrides, vocabulary, low-rank rank).  GPT-2 medium's vocabulary is
# padded to a multiple of 64 (50,257 → 50,304) as GPU LM codebases do.
# An override key naming a models/presets.py architecture: the config gets every field of
# the preset (config.base.use_preset) before the other overrides, which narrow it.
PRESET = "model.preset"
# Llama-3.2-1B (16 layers, width 2048, 32 query and 8 key/value heads, SwiGLU 8192, tied
# 128,256-token vocabulary) at context 2048, a common fine-tuning length.
_LLAMA3_2_1B = {PRESET: "llama3_2_1b", "seq_len": 2048, "batch_size": 4,
                "model.dtype": "bfloat16"}
SIZES: dict[str, tuple[dict[str, Any], int, int]] = {
    "gpt2-medium": (lm_size(24, 16, 1024, 1024, 8, "bfloat16"), 50304, 256),
    "llama3.2-1b": (_LLAMA3_2_1B, 128256, 512),
    "tiny": (lm_size(2, 2, 32, 32, 4), 65, 8),
    # The same Llama block narrowed to test size (its vocabulary too).
    "tiny-llama": ({PRESET: "llama3_2_1b", "model.num_layers": 2, "model.embed_dim": 32,
                    "model.num_heads": 4, "model.num_kv_heads": 2, "model.mlp_dim": 64,
                    "model.vocab_size": 97, "seq_len": 32, "batch_size": 4}, 97, 8),
}


class DoesNotFit(RuntimeError):
  """A compiled step whose temporaries exceed the device memory left: not run."""


def variants(rank: int, scanned: bool = True, kernels: tuple[str, ...] = ("xla", "cudnn")
             ) -> dict[str, tuple[dict[str, Any], tuple]]:
  """Phase 1: {label: (overrides, reparam rules)}, all in one layer layout."""
  out = {}
  for kernel in kernels:
    tag = "" if kernel == "xla" else ", cudnn attn"
    over = {"model.scan_layers": scanned, "model.attention": kernel}
    out[f"dense{tag}"] = (over, ())
    out[f"identity{tag}"] = (over, ((".*", "identity"),))
    out[f"lowrank(r={rank}){tag}"] = (over, ((PROJECTIONS, f"lowrank(rank={rank})"),))
  return out


def config_for(overrides: dict[str, Any], rules: tuple) -> Any:
  """The quick-start config with a size's overrides (a `PRESET` first) and reparam rules."""
  overrides = dict(overrides)
  preset = overrides.pop(PRESET, "")
  config = quickstart_config()
  # A preset and its narrowing add model keys the quick start lacks (num_kv_heads, ...).
  with config.unlocked(), config.ignore_type():
    if preset:
      use_preset(config, preset)
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  config.reparam.rules = rules
  return config


def free_device_bytes(device: Any) -> int | None:
  """Bytes the device's allocator can still hand out, where the backend says (GPU, TPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "bytes_limit" not in stats:
    return None
  return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def build(overrides: dict[str, Any], vocab: int, rules: tuple) -> tuple[StepRunner, dict]:
  """A runner whose step is compiled ahead of time; (runner, compile facts).

  Raises DoesNotFit, before running it, for a step whose temporaries exceed what the
  device has left next to the state: an out-of-memory failure mid-run says less and
  can leave the allocator fragmented for the next variant.
  """
  config = config_for(overrides, rules)
  runner = StepRunner(config, vocab, devices=jax.devices()[:1])  # one accelerator
  t0 = time.perf_counter()
  lowered = runner.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  runner.step_fn = compiled  # the timed step is exactly the compiled one
  # Whether XLA kept cuDNN's fused attention (a custom call) in the program.
  facts = {"lower_s": t1 - t0, "compile_s": t2 - t1,
           "cudnn_fmha": int("cudnn$fmha" in compiled.as_text())}
  mem = compiled.memory_analysis()
  if mem is not None:
    facts.update(temp_gib=mem.temp_size_in_bytes / 2**30,
                 argument_gib=mem.argument_size_in_bytes / 2**30)
    free = free_device_bytes(runner.mesh.devices.flat[0])
    if free is not None and mem.temp_size_in_bytes > free:
      raise DoesNotFit(f"the step needs {mem.temp_size_in_bytes / 2**30:.2f} GiB of temporaries; "
                       f"{free / 2**30:.2f} GiB free beside the state")
  facts["first_loss"] = runner.run(0)
  facts["state_gib"] = nbytes(runner.state) / 2**30
  return runner, facts


def time_group(runners: dict[str, StepRunner], steps: int, warmup: int, peak: float
               ) -> dict[str, dict[str, Any]]:
  """bench/speed.py's rows (wall_ms, tokens_per_sec, model FLOPs/token, MFU), interleaved."""
  times = timing.interleaved({k: r.run for k, r in runners.items()}, steps, warmup)
  return {label: speed_row(label, r, times[label], peak) for label, r in runners.items()}


def profile_top(runner: StepRunner, log_dir: str, steps: int = 3, top: int = 15
                ) -> dict[str, Any]:
  """Profile `steps` steps; the device ops (or host ops on a CPU) by total time."""
  runner.run(0)
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for i in range(steps):
      runner.run(i)
  paths = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  return summarize_trace(trace, steps, top)


def summarize_trace(trace: Any, steps: int, top: int) -> dict[str, Any]:
  """Per-op totals of a perfetto (Chrome JSON) trace: the device's 'XLA Ops' line if any."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  process, thread = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process[e["pid"]] = e["args"]["name"]
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      thread[(e["pid"], e["tid"])] = e["args"]["name"]
  lines: dict[tuple[str, str], float] = collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      lines[(process.get(e["pid"], "?"), thread.get((e["pid"], e["tid"]), "?"))] += e["dur"]
  device = [k for k in lines if "device" in k[0].lower() or "gpu" in k[0].lower()]
  ops_line = [k for k in device if "xla ops" in k[1].lower()]
  chosen = ops_line[:1] or sorted(device or lines, key=lambda k: -lines[k])[:1]
  per_op: dict[str, float] = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and (process.get(e["pid"], "?"),
                               thread.get((e["pid"], e["tid"]), "?")) in chosen:
      per_op[e["name"]] += e["dur"]
  total = sum(per_op.values()) or 1.0
  return {"line": " / ".join(chosen[0]) if chosen else None,
          "lines_ms_per_step": {" / ".join(k): v / 1e3 / steps for k, v in lines.items()},
          "total_ms_per_step": total / 1e3 / steps,
          "top": [{"op": name, "ms_per_step": us / 1e3 / steps, "share": us / total}
                  for name, us in per_op.most_common(top)]}


def _say(*a: Any) -> None:
  print(*a, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="gpt2-medium", choices=sorted(SIZES))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--only", default="", help="';'-separated phase-1 labels (default all)")
  parser.add_argument("--layout", default="scanned", choices=("scanned", "unrolled"),
                      help="phase 1's layer layout; phase 2 times the other one")
  parser.add_argument("--kernels", default="xla,cudnn", help="phase 1's attention kernels")
  parser.add_argument("--batch", type=int, default=0, help="batch size (0: the size's own)")
  parser.add_argument("--phases", default="1,2,3", help="which phases to run (1 always runs)")
  parser.add_argument("--out", default="workdirs/bench/gpu_train.json")
  parser.add_argument("--profile_dir", default="workdirs/bench/gpu_profile")
  args = parser.parse_args(argv)

  overrides, vocab, rank = SIZES[args.size]
  if args.batch:
    overrides = {**overrides, "batch_size": args.batch}
  scanned = args.layout == "scanned"
  peak, peak_note = device_peak_flops(dtype=overrides.get("model.dtype", "float32"))
  dev = jax.devices()[0]
  result: dict[str, Any] = {
      "size": args.size, "overrides": overrides, "vocab": vocab, "rank": rank,
      "device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
      "peak_flops": peak, "peak_note": peak_note, "variants": {}, "errors": {}}
  _say(f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
       f"peak {peak / 1e12:.0f} TFLOP/s ({peak_note})")

  def save() -> None:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)

  chosen = variants(rank, scanned, tuple(args.kernels.split(",")))
  if args.only:
    chosen = {k: v for k, v in chosen.items() if k in args.only.split(";")}
  runners: dict[str, StepRunner] = {}
  for label, (over, rules) in chosen.items():
    try:
      runners[label], facts = build({**overrides, **over}, vocab, rules)
      result["variants"][label] = facts
      _say(f"[built] {label}: " + ", ".join(f"{k}={v:.4g}" for k, v in facts.items()))
    except Exception as e:  # noqa: BLE001 — a variant that fails is reported, not fatal
      result["errors"][label] = f"{type(e).__name__}: {e}"
      _say(f"[failed] {label}: {type(e).__name__}: {str(e)[:400]}")
    save()

  rows = time_group(runners, args.steps, args.warmup, peak)
  for label, row in rows.items():
    result["variants"][label].update(row)
    base = "dense" + (", cudnn attn" if "cudnn" in label else "")
    if base in rows:
      row["vs_dense_step"] = row["wall_ms"] / rows[base]["wall_ms"]
      result["variants"][label]["vs_dense_step"] = row["vs_dense_step"]
  save()
  heading = f"\nphase 1 ({args.layout} layers, batch {overrides['batch_size']}):\n"
  _say(heading + markdown([{"variant": k, **v} for k, v in result["variants"].items()], [
      ("variant", "variant", "s"), ("wall_ms", "step ms", ".2f"),
      ("tokens_per_sec", "tokens/s", ",.0f"), ("mfu", "MFU", ".3f"),
      ("vs_dense_step", "step vs dense", ".3f"), ("compile_s", "compile s", ".1f"),
      ("temp_gib", "temp GiB", ".2f"), ("state_gib", "state GiB", ".2f"),
      ("cudnn_fmha", "cuDNN attention", "d"), ("first_loss", "first loss", ".5f")]))

  dense_labels = [k for k in rows if k.startswith("dense")]
  fastest = min(dense_labels, key=lambda k: rows[k]["wall_ms"]) if dense_labels else None
  for label in [k for k in runners if k != fastest]:
    del runners[label]
  other = "unrolled" if scanned else "scanned"
  if fastest is not None and "2" in args.phases:
    # Phase 2: the scan's own cost, the fastest dense step in the other layout.
    over, rules = chosen[fastest]
    label = f"{fastest}, {other}"
    try:
      unrolled, facts = build({**overrides, **over, "model.scan_layers": not scanned}, vocab,
                              rules)
      pair = time_group({fastest: runners[fastest], label: unrolled}, args.steps, args.warmup,
                        peak)
      facts.update(pair[label], vs_phase1_step=pair[label]["wall_ms"] / pair[fastest]["wall_ms"])
      result["other_layout"] = {args.layout: pair[fastest], label: facts}
      _say(f"\nphase 2: {label}: step {facts['wall_ms']:.2f} ms vs {args.layout} "
           f"{pair[fastest]['wall_ms']:.2f} ms (x{facts['vs_phase1_step']:.3f}), compile "
           f"{facts['compile_s']:.1f} s vs {result['variants'][fastest]['compile_s']:.1f} s")
      del unrolled
    except Exception as e:  # noqa: BLE001
      result["errors"][label] = f"{type(e).__name__}: {e}"
      _say(f"[failed] {label}: {traceback.format_exc()[-600:]}")
    save()
  if fastest is not None and "3" in args.phases:
    # Phase 3: where the fastest dense step's time goes.
    try:
      prof = profile_top(runners[fastest], args.profile_dir)
      result["profile"] = {"variant": fastest, **prof}
      _say(f"\nphase 3: profile of '{fastest}' ({prof['line']}, "
           f"{prof['total_ms_per_step']:.2f} ms/step summed):")
      for t in prof["top"]:
        _say(f"  {t['ms_per_step']:8.3f} ms  {100 * t['share']:5.1f}%  {t['op'][:110]}")
    except Exception as e:  # noqa: BLE001
      result["errors"]["profile"] = f"{type(e).__name__}: {e}"
      _say(f"[failed] profile: {traceback.format_exc()[-600:]}")
    save()
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
