r"""The benchmark suite: one command, a printed table, a JSON file.

  python -m bench.run              # CPU sizes (quick-start LM, width 1024, reparam at width 512)
  python -m bench.run --smoke      # tiny sizes, 2 steps: CI (< 60 s on a quiet 2-core machine)
  python -m bench.run --gpu        # GPT-2-medium shape, bf16, context 1024, one accelerator
  python -m bench.run --only speed,reparam --out results.json

Benchmarks (docs/performance.md explains each and records results):
  speed    step time, tokens/s, model FLOPs/token, TFLOP/s, MFU and compile time per model size
  breakdown  forward, backward and optimizer shares of the first model's train step
  reparam  step time of every reparameterization as a ratio to dense
  memory   peak memory per reparameterization, each variant in a fresh process
  fsdp     per-device parameter bytes on a simulated 8-device CPU mesh (FSDP)
  vs_torch the first model's train step against nanoGPT's PyTorch step (same model, same
           machine, alternating chunks); needs an interpreter with torch (--torch_python)
  generate cached greedy decoding of a GPT-2 against transformers' `generate`, tokens/s
           and first-call (compile) time (bench/generate_vs_torch.py); needs torch too
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Any

import jax

from bench import breakdown, fsdp, generate_vs_torch, memory, speed, timing, vs_torch
from bench.lm_step import quickstart_config
from bench.suites import SUITES, reparam_variants
from bench.table import markdown
from reparam_jax import reparam
from reparam_jax.training.devices import configure_cpu_devices

BENCHMARKS = ("speed", "breakdown", "reparam", "memory", "fsdp", "vs_torch", "generate")


def machine() -> dict[str, Any]:
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine(),
          "cpu_model": timing.cpu_model(), "python": platform.python_version(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _mb(n: float) -> float:
  return n / 2**20


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps (CI)")
  mode.add_argument("--gpu", action="store_true", help="GPT-2-medium bf16 T=1024 sizes")
  parser.add_argument("--only", default=",".join(BENCHMARKS),
                      help=f"comma-separated subset of {BENCHMARKS}")
  parser.add_argument("--out", default="workdirs/bench/results.json", help="JSON output path")
  parser.add_argument("--torch_python", default=None,
                      help="interpreter with torch for vs_torch (default: $REPARAM_TORCH_PYTHON, "
                      "else .venv-py311/bin/python, which `make test` builds)")
  args = parser.parse_args(argv)
  suite = SUITES["smoke" if args.smoke else "gpu" if args.gpu else "cpu"]
  only = [b.strip() for b in args.only.split(",") if b.strip()]
  unknown = set(only) - set(BENCHMARKS)
  if unknown:
    parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")

  # The CPU device count the quick start trains with (before JAX starts).
  configure_cpu_devices(quickstart_config().perf.cpu_devices)
  result: dict[str, Any] = {
      "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
      "suite": suite.name, "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": machine(), "load_average_start": timing.load_average(), "notes": []}
  print(f"# bench suite '{suite.name}' on {result['machine']['device_count']}x "
        f"{result['machine']['device_kind']} ({result['machine']['cpu_count']} CPUs, "
        f"{result['machine']['cpu_model']}), "
        f"load average {result['load_average_start']:.2f}", flush=True)

  if "speed" in only:
    dtype = next(iter(suite.speed_models.values()))[0].get("model.dtype", "float32")
    peak, source = speed.cpu_or_device_peak(dtype)
    result["peak_flops_per_device"], result["peak_source"] = peak, source
    rows = speed.model_speed(suite, peak)
    result["speed"] = rows
    print(f"\n## Train step (peak {peak / 1e12:.3g} TFLOP/s per device: {source})\n")
    print(markdown(rows, [("model", "model", "s"), ("devices", "devices", "d"),
                        ("wall_ms", "step ms (median)", ".1f"),
                        ("wall_min_ms", "min ms", ".1f"), ("cpu_ms", "CPU ms", ".1f"),
                        ("tokens_per_sec", "tokens/s", ",.0f"),
                        ("model_flops_per_token", "model FLOPs/token", ",d"),
                        ("tflops_per_device", "TFLOP/s/device", ".4f"), ("mfu", "MFU", ".3f"),
                        ("lower_s", "trace+lower s", ".2f"), ("compile_s", "compile s", ".2f")]),
          flush=True)

  if "breakdown" in only:
    label, (overrides, vocab) = next(iter(suite.speed_models.items()))
    rows = breakdown.step_breakdown(speed.runner(overrides, vocab), suite)
    result["breakdown"] = {"model": label, "phases": rows}
    print(f"\n## Where the train step's time goes: {label} (interleaved)\n")
    print(markdown(rows, [("phase", "phase", "s"), ("wall_ms", "ms (median)", ".1f"),
                        ("cpu_ms", "CPU ms", ".1f"), ("share", "share of step", ".2f")]),
          flush=True)

  if "reparam" in only:
    rows, notes = speed.reparam_overhead(suite)
    result["reparam"], result["notes"] = rows, result["notes"] + notes
    print("\n## Reparameterizations: train step vs dense (same process, interleaved)\n")
    print(markdown(rows, [("model", "model", "s"), ("variant", "variant", "s"),
                        ("wall_ms", "step ms", ".1f"), ("wall_ratio", "÷ dense (wall)", ".3f"),
                        ("cpu_ratio", "÷ dense (CPU time)", ".3f"),
                        ("model_flops_per_token", "model FLOPs/token", ",d"),
                        ("flops_ratio", "FLOPs ÷ dense", ".3f"),
                        ("opt_state_ratio", "optimizer state ÷ dense", ".3f")]), flush=True)
    for n in notes:
      print(f"note: {n}")

  if "memory" in only:
    overrides, vocab = suite.reparam_model
    variants, notes = reparam_variants(suite.lowrank_rank, set(reparam.TRANSFORMS))
    if suite.memory_variants is not None:
      variants = {k: v for k, v in variants.items() if k in suite.memory_variants}
    rows = memory.variant_memory(variants, overrides, vocab, suite.memory_steps)
    result["memory"] = rows
    for r in rows:
      if "error" in r:
        result["notes"].append(f"memory of {r['variant']}: {r['error']}")
        r.update(peak_rss_bytes=None, device_peak_bytes=None, peak_rss_mb=None)
        continue
      r["peak_rss_mb"] = _mb(r["peak_rss_bytes"])
      r["over_runtime_mb"] = _mb(r["rss_over_runtime_bytes"]) if "rss_over_runtime_bytes" in r \
          else None
      r["device_peak_mb"] = _mb(r["device_peak_bytes"]) if r["device_peak_bytes"] else None
    print("\n## Peak memory per variant (fresh process each)\n")
    print(markdown(rows, [("variant", "variant", "s"), ("device_peak_mb", "device peak MiB", ".1f"),
                        ("peak_rss_mb", "host peak RSS MiB", ".1f"),
                        ("over_runtime_mb", "RSS over bare runtime MiB", ".1f")]), flush=True)

  if "fsdp" in only:
    overrides, vocab = suite.fsdp_model
    out = fsdp.measure(overrides, vocab)
    result["fsdp"] = out
    print(f"\n## FSDP on {out['devices']} simulated CPU devices\n")
    print(f"parameters: {out['param_bytes_total']:,} B total; per device "
          f"{out['param_bytes_per_device_max']:,} B max, {out['param_bytes_per_device_min']:,} B "
          f"min; total/{out['devices']} = {out['ideal_per_device']:,.0f} B "
          f"(max/ideal {out['param_bytes_per_device_max'] / out['ideal_per_device']:.3f})")
    print(f"optimizer state: {out['opt_bytes_total']:,} B total; per device "
          f"{out['opt_bytes_per_device_max']:,} B max")
    print(f"replicated leaves: {', '.join(out['replicated_leaves']) or 'none'}", flush=True)

  if "vs_torch" in only:
    python = vs_torch.torch_python(args.torch_python)
    if python is None:
      note = ("vs_torch skipped: no interpreter with torch (run `make test-peers` once to build "
              ".venv-py311, or pass --torch_python)")
      result["notes"].append(note)
      print(f"\n{note}", flush=True)
    else:
      out = vs_torch.compare(suite, python, suite.torch_rounds, suite.torch_chunk)
      result["vs_torch"] = out
      label = next(iter(suite.speed_models))
      print(f"\n## {label}: train step vs nanoGPT's PyTorch step (torch {out['torch']}, "
            f"{out['torch_threads']} threads; alternating chunks)\n")
      print(markdown([{"side": f"reparam_jax ({out['jax_devices']} CPU devices)",
                     "ms": out["jax_ms"], "cpu": out["jax_cpu_ms"], "ratio": out["ratio"]},
                    {"side": "PyTorch (nanoGPT step, eager)", "ms": out["torch_ms"],
                     "cpu": out["torch_cpu_ms"], "ratio": 1.0}],
                   [("side", "step", "s"), ("ms", "ms (median)", ".1f"),
                    ("cpu", "CPU ms", ".1f"), ("ratio", "÷ PyTorch", ".3f")]), flush=True)

  if "generate" in only:
    python = vs_torch.torch_python(args.torch_python)
    if python is None:
      note = "generate skipped: no interpreter with torch (see vs_torch)"
      result["notes"].append(note)
      print(f"\n{note}", flush=True)
    else:
      size, prompt, new, rounds, batch, device = suite.generate
      out = generate_vs_torch.compare(size, prompt, new, rounds, python, batch, device)
      result["generate"] = out
      print(f"\n## Generation: {out['model_class']} {size}, greedy, batch {batch}, {new} tokens "
            f"after {prompt} "
            f"(torch {out['torch']} on {device}; median of {rounds} calls)\n")
      sides = [{"side": f"reparam_jax ({out['jax_device']})", "tps": out["tokens_per_s"]["jax"],
                "ratio": out["ratio"], "first": out["jax_first_call_s"]},
               {"side": f"transformers generate ({out['transformers']})",
                "tps": out["tokens_per_s"]["torch"], "ratio": 1.0, "first": None}]
      print(markdown(sides, [("side", "decoder", "s"), ("tps", "tokens/s", ",.1f"),
                             ("ratio", "÷ transformers", ".2f"), ("first", "first call s", ".1f")]))
      print(f"token mismatches {out['token_mismatches']}/{rounds}", flush=True)

  result["load_average_end"] = timing.load_average()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nload average {result['load_average_start']:.2f} → {result['load_average_end']:.2f}; "
        f"results written to {args.out}")
  return result


if __name__ == "__main__":
  main()
