r"""Train-step time of masked and fake-quantized Transformers relative to dense.

  python bench/compress_bench.py              # quick-start LM size (configs/lm/shakespeare_char.py)
  python bench/compress_bench.py --smoke      # tiny sizes, 2 steps (CI)

Each variant is the trainer's own jitted train step (`bench.lm_step.StepRunner`:
create_train_state + make_train_step, AdamW, donation) on synthetic tokens.
All variants live in one process and are timed interleaved (round-robin,
alternating order) after a warm-up; ratios are ratios of medians.  Goal:
masked and fake-quantized steps ≤ 1.15× dense.

`make_variant(name, **overrides)` builds one variant's runner by name
(`VARIANTS`), for other benchmarks (bench/run.py) to import.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.lm_step import StepRunner, quickstart_config  # noqa: E402

KERNELS = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"
# Mask updates happen on schedule steps only (lax.cond); the timed steps are
# the common case between them, so updates are scheduled outside the window.
VARIANTS: dict[str, tuple] = {
    "dense": (),
    "mask (magnitude, 50%)": ((KERNELS, "mask(sparsity=0.5, begin_step=100000, end_step=100000)"),),
    "mask (movement scores)": ((KERNELS, "mask(method=movement, sparsity=0.5, "
                                         "begin_step=100000, end_step=100000)"),),
    "quant int8 (weights)": ((KERNELS, "quant(bits=8)"),),
    "quant int8 W8A8": ((KERNELS, "quant(bits=8, act_bits=8)"),),
    "quant int4 LSQ": ((KERNELS, "quant(bits=4, scale=learned)"),),
}


def make_variant(name: str, smoke: bool = False, **overrides: Any) -> StepRunner:
  """The trainer's train step for variant `name` (a key of VARIANTS)."""
  if name not in VARIANTS:
    raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
  cfg = {"reparam.rules": VARIANTS[name], "num_steps": 100000}
  if smoke:
    cfg.update({"model.num_layers": 1, "model.embed_dim": 32, "model.mlp_dim": 64,
                "model.num_heads": 2, "seq_len": 16, "batch_size": 4})
  cfg.update(overrides)
  return StepRunner(quickstart_config(**cfg), vocab_size=65)


def main() -> dict[str, float]:
  parser = argparse.ArgumentParser()
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args()
  if args.smoke:
    args.steps, args.warmup = 2, 1
  runners = {n: make_variant(n, args.smoke) for n in VARIANTS}
  for i in range(args.warmup):
    for r in runners.values():
      r.run(i)
  times: dict[str, list[float]] = {n: [] for n in runners}
  names = list(runners)
  for i in range(args.steps):
    for n in (names if i % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      runners[n].run(args.warmup + i)
      times[n].append(time.perf_counter() - t0)
  med = {n: statistics.median(t) for n, t in times.items()}
  print(f"# quick-start LM ({'smoke' if args.smoke else 'shakespeare_char'}), "
        f"{args.steps} interleaved steps after {args.warmup} warm-up, medians")
  print("| variant | step time | / dense | goal |")
  print("|---|---|---|---|")
  for n in names:
    print(f"| {n} | {med[n] * 1e3:.1f} ms | {med[n] / med['dense']:.3f} | "
          f"{'' if n == 'dense' else '≤ 1.15'} |")
  return {n: med[n] / med["dense"] for n in names}


if __name__ == "__main__":
  main()
