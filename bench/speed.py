"""Train-step time, tokens/s and MFU of model sizes and of reparameterizations.

Every variant is the trainer's own jitted step (bench/lm_step.py) and all
variants of one benchmark are timed interleaved in this process.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from bench import timing
from bench.lm_step import StepRunner, quickstart_config
from bench.reparam_bench import nbytes
from bench.suites import DEVICES, Suite, reparam_variants
from reparam_jax import reparam
from reparam_jax.perf import flops as flops_lib
from reparam_jax.perf.accounting import find_transformer_config
from reparam_jax.perf.peaks import device_peak_flops


def runner(overrides: dict[str, Any], vocab: int, rules: tuple = ()) -> StepRunner:
  """The quick-start step with a suite's overrides (`DEVICES`: run on the first N devices)."""
  overrides = dict(overrides)
  n_devices = overrides.pop(DEVICES, None)  # None: every device of the process
  config = quickstart_config(**overrides)
  config.reparam.rules = rules
  return StepRunner(config, vocab, devices=None if n_devices is None else jax.devices()[:n_devices])


def _row_peak(peak_flops: float, n_devices: int) -> float:
  """Per-device peak of a runner on `n_devices` of this process's devices.

  Simulated CPU devices share the host's cores, so the measured peak was split
  over all of them; a runner on fewer of them still has every core.
  """
  if jax.devices()[0].platform != "cpu":
    return peak_flops
  return peak_flops * jax.device_count() / n_devices


def _flops_per_token(r: StepRunner) -> int:
  cfg = find_transformer_config(r.task.model())
  return flops_lib.model_flops(cfg, r.config.seq_len, r.state.params, r.config.reparam).per_token


def rounds(runs: dict[str, Any], suite: Suite) -> int:
  """Rounds to time: `suite.steps`, or more to fill `suite.speed_seconds` for fast models."""
  round_s = 0.0
  for run in runs.values():
    run(0)  # compiles
    t0 = time.perf_counter()
    run(1)
    round_s += time.perf_counter() - t0
  return max(suite.steps, int(suite.speed_seconds / max(round_s, 1e-6)))


def model_speed(suite: Suite, peak_flops: float) -> list[dict[str, Any]]:
  # Only variants of one model size are interleaved, and one size at a time
  # exists: a large model's steps and buffers beside a 60 ms model inflate
  # the small one's median (docs/performance.md).
  groups: dict[tuple, list[str]] = {}
  for label, (o, v) in suite.speed_models.items():
    key = (tuple(sorted((k, x) for k, x in o.items() if k != DEVICES)), v)
    groups.setdefault(key, []).append(label)
  rows = {}
  for labels in groups.values():
    runners = {label: runner(*suite.speed_models[label]) for label in labels}
    compile_s = {label: r.compile_seconds() for label, r in runners.items()}
    runs = {label: r.run for label, r in runners.items()}
    times = timing.interleaved(runs, rounds(runs, suite), suite.warmup)
    for label, r in runners.items():
      rows[label] = speed_row(label, r, times[label], peak_flops)
      rows[label]["lower_s"], rows[label]["compile_s"] = compile_s[label]
    del runners, runs
  return [rows[label] for label in suite.speed_models]


def speed_row(label: str, r: StepRunner, t: dict[str, float], peak_flops: float
               ) -> dict[str, Any]:
  tokens = r.config.batch_size * r.config.seq_len
  n_devices = r.mesh.devices.size
  tps_dev = tokens / (t["wall_ms"] / 1e3) / n_devices
  fpt = _flops_per_token(r)
  return dict(model=label, devices=n_devices, **t,
              tokens_per_sec=tokens / (t["wall_ms"] / 1e3), model_flops_per_token=fpt,
              tflops_per_device=flops_lib.achieved_flops_per_device(fpt, tps_dev) / 1e12,
              mfu=flops_lib.mfu(fpt, tps_dev, _row_peak(peak_flops, n_devices)))


def reparam_overhead(suite: Suite) -> tuple[list[dict[str, Any]], list[str]]:
  """Every variant's step against dense on each of the suite's reparam models."""
  models = {suite.reparam_model_label or "reparam model":
            (*suite.reparam_model, suite.lowrank_rank), **suite.reparam_more}
  rows, notes = [], []
  for model_label, (overrides, vocab, rank) in models.items():
    model_rows, model_notes = _reparam_rows(overrides, vocab, rank, suite)
    rows += [{"model": model_label, **row} for row in model_rows]
    notes += [f"{model_label}: {n}" for n in model_notes]
  return rows, notes


def _reparam_rows(overrides: dict[str, Any], vocab: int, rank: int, suite: Suite
                  ) -> tuple[list[dict[str, Any]], list[str]]:
  variants, notes = reparam_variants(rank, set(reparam.TRANSFORMS))
  if suite.reparam_subset is not None:
    variants = {k: v for k, v in variants.items() if k in suite.reparam_subset}
  runners = {}
  for label, rules in variants.items():
    try:
      runners[label] = runner(overrides, vocab, rules)
      runners[label].run(0)  # compile now: a variant that cannot train is reported, not fatal
    except Exception as e:  # noqa: BLE001
      notes.append(f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      runners.pop(label, None)
  times = timing.interleaved({k: r.run for k, r in runners.items()}, suite.steps, suite.warmup)
  dense = times["dense"]
  dense_opt = nbytes(runners["dense"].state.opt_state)
  dense_flops = _flops_per_token(runners["dense"])
  rows = []
  for label, r in runners.items():
    t, flops = times[label], _flops_per_token(r)
    # Time ratio beside FLOPs ratio: a row whose time ratio is far above its
    # FLOPs ratio is bound by overhead (element-wise work, small kernels), not matmuls.
    rows.append(dict(variant=label, **t, wall_ratio=t["wall_ms"] / dense["wall_ms"],
                     cpu_ratio=t["cpu_ms"] / dense["cpu_ms"], model_flops_per_token=flops,
                     flops_ratio=flops / dense_flops,
                     opt_state_ratio=nbytes(r.state.opt_state) / dense_opt))
  return rows, notes


def cpu_or_device_peak(dtype: str) -> tuple[float, str]:
  return device_peak_flops(dtype=dtype)
