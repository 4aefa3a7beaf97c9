"""Train-step time, tokens/s and MFU of model sizes and of reparameterizations.

Every variant is the trainer's own jitted step (bench/lm_step.py) and all
variants of one benchmark are timed interleaved in this process.
"""

from __future__ import annotations

from typing import Any

import jax

from bench import timing
from bench.lm_step import StepRunner, quickstart_config
from bench.reparam_bench import nbytes
from bench.suites import Suite, reparam_variants
from reparam_jax import reparam
from reparam_jax.perf import flops as flops_lib
from reparam_jax.perf.accounting import find_transformer_config
from reparam_jax.perf.peaks import device_peak_flops


def _runner(overrides: dict[str, Any], vocab: int, rules: tuple = ()) -> StepRunner:
  config = quickstart_config(**overrides)
  config.reparam.rules = rules
  return StepRunner(config, vocab)


def _flops_per_token(r: StepRunner) -> int:
  cfg = find_transformer_config(r.task.model())
  return flops_lib.model_flops(cfg, r.config.seq_len, r.state.params, r.config.reparam).per_token


def model_speed(suite: Suite, peak_flops: float) -> list[dict[str, Any]]:
  runners = {label: _runner(o, v) for label, (o, v) in suite.speed_models.items()}
  times = timing.interleaved({k: r.run for k, r in runners.items()}, suite.steps, suite.warmup)
  rows = []
  for label, r in runners.items():
    t = times[label]
    tokens = r.config.batch_size * r.config.seq_len
    tps_dev = tokens / (t["wall_ms"] / 1e3) / jax.device_count()
    fpt = _flops_per_token(r)
    rows.append(dict(model=label, **t, tokens_per_sec=tokens / (t["wall_ms"] / 1e3),
                     model_flops_per_token=fpt,
                     tflops_per_device=flops_lib.achieved_flops_per_device(fpt, tps_dev) / 1e12,
                     mfu=flops_lib.mfu(fpt, tps_dev, peak_flops)))
  return rows


def reparam_overhead(suite: Suite) -> tuple[list[dict[str, Any]], list[str]]:
  overrides, vocab = suite.reparam_model
  variants, notes = reparam_variants(suite.lowrank_rank, set(reparam.TRANSFORMS))
  if suite.reparam_subset is not None:
    variants = {k: v for k, v in variants.items() if k in suite.reparam_subset}
  runners = {}
  for label, rules in variants.items():
    try:
      runners[label] = _runner(overrides, vocab, rules)
      runners[label].run(0)  # compile now: a variant that cannot train is reported, not fatal
    except Exception as e:  # noqa: BLE001
      notes.append(f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      runners.pop(label, None)
  times = timing.interleaved({k: r.run for k, r in runners.items()}, suite.steps, suite.warmup)
  dense = times["dense"]
  dense_opt = nbytes(runners["dense"].state.opt_state)
  rows = []
  for label, r in runners.items():
    t = times[label]
    rows.append(dict(variant=label, **t, wall_ratio=t["wall_ms"] / dense["wall_ms"],
                     cpu_ratio=t["cpu_ms"] / dense["cpu_ms"],
                     model_flops_per_token=_flops_per_token(r),
                     opt_state_ratio=nbytes(r.state.opt_state) / dense_opt))
  return rows, notes


def cpu_or_device_peak(dtype: str) -> tuple[float, str]:
  return device_peak_flops(dtype=dtype)
