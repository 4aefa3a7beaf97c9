r"""Issue 36's accelerator goals in one command, in a fixed time budget.

  python -m bench.gpu_suite --torch_python python3 --out $OUT/gpu_suite.json   # one GPU, ≤ 9 min
  python -m bench.gpu_suite --smoke        # tiny sizes on a CPU in < 30 s (CI)
  python -m bench.gpu_suite --parts lora,generation   # a rerun of some parts

Parts, in this order, each against its goal:

  dense_gpt2_medium   GPT-2-medium shape (bf16, context 1024, vocabulary 50,304), cuDNN
                      attention, scanned layers: a batch × remat sweep, the fastest that fits
                      (then the same with `model.scan_unroll` layers per loop iteration, where
                      the config has that key); MFU ≥ 45 %
  identity            the identity interceptor against dense at that batch/remat,
                      interleaved; step ≤ 1.01 × dense
  lowrank             low-rank W = U Vᵀ, rank width/4 on every projection; tokens/s ≥ 1.5 ×
                      dense
  lora                LoRA rank 16 on every projection, the rest frozen; step ≤ 0.75 × full
                      fine-tuning's (the dense step)
  dense_llama3_2_1b   the llama3_2_1b preset's shape (context 2048), a small batch × remat
                      sweep; MFU ≥ 45 %
  generation          `python -m bench.generate_vs_torch --cache static --compile` in a child
                      process (transformers with its static cache and torch.compile); tokens/s
                      ≥ 2 × transformers at every batch
  dense_gpt2_medium_unrolled   the best GPT-2-medium configuration with unrolled layers (70–90 s
                      to compile); MFU ≥ 45 %

Every training figure is bench/gpu_train.py's: the trainer's own jitted step compiled
ahead of time, synthetic tokens on device, medians, MFU over the device's published dense
bf16 peak.  Each part has a time cap, checked before every build (a compile is not
interrupted); a part that does not fit the time left is skipped and says so.  The JSON
file is rewritten after every part, so a run cut short keeps what it measured.  The end
prints a Markdown table with the device, the commit and the jax version.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax

from bench import gpu_train, peer_process, timing
from bench.table import markdown
from reparam_jax.perf.peaks import device_peak_flops

REPO = peer_process.REPO
# The attention kernel and layer layout every training part uses: cuDNN's fused
# attention (XLA's spells out the [B, H, L, L] scores: 2.1× slower at GPT-2-medium on an
# H100, docs/performance.md) and scanned layers (4–10 s to compile against 70–90 s
# unrolled).  On a CPU the cuDNN setting falls back to XLA's kernel (models/block.py).
TRAIN_LAYOUT = {"model.attention": "cudnn", "model.scan_layers": True}

# part → (figure the goal is about, comparison, threshold, the goal in words).
GOALS: dict[str, tuple[str, str, float, str]] = {
    "dense_gpt2_medium": ("mfu", ">=", 0.45, "MFU ≥ 45%"),
    "identity": ("ratio", "<=", 1.01, "step ≤ 1.01× dense"),
    "lowrank": ("ratio", ">=", 1.5, "tokens/s ≥ 1.5× dense"),
    "lora": ("ratio", "<=", 0.75, "step ≤ 0.75× full fine-tuning"),
    "dense_llama3_2_1b": ("mfu", ">=", 0.45, "MFU ≥ 45%"),
    "generation": ("ratio", ">=", 2.0, "tokens/s ≥ 2× transformers (static cache, compiled)"),
    "dense_gpt2_medium_unrolled": ("mfu", ">=", 0.45, "MFU ≥ 45%"),
}
PARTS = tuple(GOALS)


@dataclasses.dataclass(frozen=True)
class Profile:
  """Sizes, sweeps, step counts and time caps of one mode (the GPU run, or the smoke)."""
  name: str
  gpt2: str  # a gpu_train.SIZES key
  gpt2_sweep: tuple[dict[str, Any], ...]  # overrides tried in turn on top of the size
  llama: str
  llama_sweep: tuple[dict[str, Any], ...]
  lora_rank: int
  scan_unroll: int  # layers per scanned-loop iteration tried after the sweep (0: never)
  steps: int  # timed steps of each variant (interleaved where there are two)
  warmup: int
  # generate_vs_torch's arguments, one child process each; `--compile` is added where
  # `generation_compile`.
  generation: tuple[dict[str, Any], ...]
  generation_compile: bool
  budget_s: float  # the whole run
  caps: dict[str, float]  # each part's ceiling
  min_s: dict[str, float]  # a part starts only with this much of the budget left


def _remat(batch: int, remat: str) -> dict[str, Any]:
  return {"batch_size": batch, "model.remat": remat}


GPU = Profile(
    name="gpu", gpt2="gpt2-medium", llama="llama3.2-1b", lora_rank=16, scan_unroll=4,
    # Batch 8 without remat is the measured baseline (31.9 % MFU unrolled); larger batches
    # amortise the per-step weight work (casts, Adam, the scan's copies); `dots` keeps the
    # matmul outputs and recomputes the cheap rest where batch 32 does not fit without.
    gpt2_sweep=(_remat(8, "none"), _remat(16, "none"), _remat(32, "none"), _remat(32, "dots")),
    llama_sweep=(_remat(4, "none"), _remat(8, "dots"), _remat(16, "full")),
    steps=20, warmup=3,
    generation=tuple({"size": "small", "prompt": 32, "new": 64, "rounds": 5, "batch": b,
                      "device": "cuda"} for b in (1, 8)),
    generation_compile=True,
    budget_s=540.0,
    caps={"dense_gpt2_medium": 130, "identity": 40, "lowrank": 45, "lora": 45,
          "dense_llama3_2_1b": 120, "generation": 170, "dense_gpt2_medium_unrolled": 150},
    min_s={"dense_gpt2_medium": 20, "identity": 15, "lowrank": 15, "lora": 15,
           "dense_llama3_2_1b": 40, "generation": 60, "dense_gpt2_medium_unrolled": 100})

SMOKE = Profile(
    name="smoke", gpt2="tiny", llama="tiny-llama", lora_rank=4, scan_unroll=2,
    # One point each: the scan_unroll point makes GPT-2's sweep two (best_fit's choice among
    # more is tests/perf/test_gpu_suite_smoke.py's unit test); every compile here costs 3 s.
    gpt2_sweep=(_remat(4, "none"),), llama_sweep=(_remat(4, "none"),),
    steps=2, warmup=1,
    generation=({"size": "tiny", "prompt": 5, "new": 8, "rounds": 2, "batch": 2, "device": "cpu"},),
    # torch.compile on a CPU builds C++ for a minute; the GPU run compiles.
    generation_compile=False,
    budget_s=300.0, caps={p: 120.0 for p in PARTS}, min_s={p: 0.0 for p in PARTS})

PROFILES = {p.name: p for p in (GPU, SMOKE)}


def describe(overrides: dict[str, Any]) -> str:
  """A sweep point as a label: 'B16 remat=none' (and the scan's unroll where set)."""
  text = f"B{overrides['batch_size']} remat={overrides['model.remat']}"
  if overrides.get("model.scan_unroll", 1) != 1:
    text += f" scan_unroll={overrides['model.scan_unroll']}"
  if overrides.get("model.scan_layers") is False:
    text += " unrolled"
  return text


def best_fit(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The measured sweep row with the most tokens/s (rows that failed or did not fit have
  no tokens_per_sec), or None."""
  measured = [r for r in rows if r.get("tokens_per_sec")]
  return max(measured, key=lambda r: r["tokens_per_sec"]) if measured else None


def goal_met(part: str, value: float | None) -> bool | None:
  if value is None or not math.isfinite(value):
    return None
  _, op, threshold, _ = GOALS[part]
  return value >= threshold if op == ">=" else value <= threshold


def commit_of_checkout() -> str:
  """HEAD's short hash, marked when the working tree has uncommitted changes."""
  try:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    return head + (" + local changes" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown (no git checkout: pass --commit)"


def _say(*a: Any) -> None:
  print(*a, flush=True)


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


class Suite:
  """One run: the parts in order against one budget, the JSON file rewritten after each."""

  def __init__(self, profile: Profile, out: str, torch_python: str | None, budget_s: float,
               commit: str):
    self.profile, self.out, self.torch_python = profile, out, torch_python
    self.start = time.perf_counter()
    self.deadline = self.start + budget_s
    dev = jax.devices()[0]
    # Accelerators: the published bf16 peak; a CPU: a matmul measured in the sizes' dtype.
    dtype = gpu_train.SIZES[profile.gpt2][0].get("model.dtype", "float32")
    self.peak, peak_note = device_peak_flops(dtype=dtype)
    self.result: dict[str, Any] = {
        "profile": profile.name, "budget_s": budget_s,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"device": dev.device_kind, "platform": dev.platform,
                    "device_count": jax.device_count(), "cpu": timing.cpu_model(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "jax": jax.__version__, "commit": commit,
                    "peak_flops": self.peak, "peak_note": peak_note,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "goals": {p: GOALS[p][3] for p in PARTS}, "parts": {}}
    # GPT-2-medium's best dense step, kept for the ratio parts: its runner, sweep point and
    # first loss (the identity interceptor's must equal it: same seed, same batch).
    self.dense_runner: Any = None
    self.dense_overrides: dict[str, Any] | None = None
    self.dense_first_loss: float | None = None
    _say(f"# gpu_suite ({profile.name}) on {dev.device_kind} ({dev.platform}), jax "
         f"{jax.__version__}, commit {commit}; peak {self.peak / 1e12:.4g} TFLOP/s ({peak_note}); "
         f"budget {budget_s:.0f} s")

  # ---- bookkeeping ----------------------------------------------------------------------

  def left(self) -> float:
    return self.deadline - time.perf_counter()

  def save(self) -> None:
    self.result["elapsed_s"] = time.perf_counter() - self.start
    os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
    tmp = self.out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.result, f, indent=1, default=str)
    os.replace(tmp, self.out)  # a kill mid-write leaves the previous file whole

  def run_part(self, part: str, fn: Callable[[float], dict[str, Any]]) -> None:
    cap, need = self.profile.caps[part], self.profile.min_s[part]
    t0 = time.perf_counter()
    record: dict[str, Any] = {"cap_s": cap, "goal": GOALS[part][3]}
    if self.left() < need:
      record.update(status="skipped", reason=f"{self.left():.0f} s of the budget left, the part "
                    f"needs {need:.0f} s")
    else:
      try:
        record.update(fn(t0 + min(cap, self.left())))
        record.setdefault("status", "ok")
      except Exception as e:  # noqa: BLE001 — a part that fails is reported, not fatal
        record.update(status="failed", error=_error(e), traceback=traceback.format_exc()[-2000:])
    figure = GOALS[part][0]
    record["value"] = record.get(figure)
    record["goal_met"] = goal_met(part, record["value"])
    record["wall_s"] = time.perf_counter() - t0
    self.result["parts"][part] = record
    self.save()
    value = record["value"]
    _say(f"[{part}] {record['status']}"
         + (f": {figure} {value:.4g} (goal {GOALS[part][3]}: "
            f"{'met' if record['goal_met'] else 'not met'})" if value is not None else "")
         + (f" — {record.get('error') or record.get('reason')}"
            if record["status"] != "ok" else "") + f"; {record['wall_s']:.1f} s")

  # ---- training parts -------------------------------------------------------------------

  def _time(self, runners: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return gpu_train.time_group(runners, self.profile.steps, self.profile.warmup, self.peak)

  def sweep(self, size: str, points: tuple[dict[str, Any], ...], deadline: float,
            keep_best: bool) -> tuple[list[dict[str, Any]], Any]:
    """Each point built, timed alone and (unless it is the best so far and `keep_best`)
    dropped before the next is built: (rows, the best point's runner or None)."""
    base, vocab, _ = gpu_train.SIZES[size]
    rows: list[dict[str, Any]] = []
    best_runner, best_tps, last_s = None, 0.0, 0.0
    for point in points:
      over = {**base, **TRAIN_LAYOUT, **point}
      row: dict[str, Any] = {"point": describe(over), "overrides": point}
      rows.append(row)
      if time.perf_counter() + last_s > deadline:
        row["status"] = "skipped: the part's time cap"
        continue
      t0 = time.perf_counter()
      try:
        runner, facts = gpu_train.build(over, vocab, ())
        row.update(facts)
        row.update(self._time({row["point"]: runner})[row["point"]])
        row["status"] = "ok"
      except gpu_train.DoesNotFit as e:
        row["status"] = f"does not fit: {e}"
        runner = None
      except Exception as e:  # noqa: BLE001 — out of memory at run time, say
        row["status"] = f"failed: {_error(e)}"
        runner = None
      last_s = time.perf_counter() - t0
      row["build_and_time_s"] = last_s
      _say(f"  {row['point']}: " + (f"{row['wall_ms']:.2f} ms, {row['tokens_per_sec']:,.0f} "
                                   f"tokens/s, MFU {row['mfu']:.3f}, compile "
                                   f"{row['compile_s']:.1f} s" if row["status"] == "ok"
                                   else row["status"]))
      if runner is not None and keep_best and row["tokens_per_sec"] > best_tps:
        best_runner, best_tps = runner, row["tokens_per_sec"]
      del runner
      gc.collect()
    return rows, best_runner

  def _sweep_part(self, size: str, points: tuple[dict[str, Any], ...], deadline: float,
                  keep_best: bool) -> dict[str, Any]:
    rows, runner = self.sweep(size, points, deadline, keep_best)
    best = best_fit(rows)
    if best is None:
      raise RuntimeError("no sweep point ran: " + "; ".join(r["status"] for r in rows))
    if keep_best:
      self.keep_dense(runner, best)
    return {"size": size, "sweep": rows, "best": best["point"], "mfu": best["mfu"],
            "tokens_per_sec": best["tokens_per_sec"], "step_ms": best["wall_ms"],
            "compile_s": best["compile_s"]}

  def dense_gpt2(self, deadline: float) -> dict[str, Any]:
    p = self.profile
    out = self._sweep_part(p.gpt2, p.gpt2_sweep, deadline, keep_best=True)
    # Unrolling a few layers per scan iteration trims the scan's own copies (9.9 % of the
    # step at batch 8) at a fraction of the unrolled compile; only where the config has it.
    if p.scan_unroll > 1 and "scan_unroll" in gpu_train.config_for({}, ()).model:
      point = {**self.dense_overrides, "model.scan_unroll": p.scan_unroll}
      rows, runner = self.sweep(p.gpt2, (point,), deadline, keep_best=True)
      out["sweep"] += rows
      if runner is not None and rows[0]["tokens_per_sec"] > out["tokens_per_sec"]:
        self.keep_dense(runner, rows[0])
        out.update(best=rows[0]["point"], mfu=rows[0]["mfu"],
                   tokens_per_sec=rows[0]["tokens_per_sec"], step_ms=rows[0]["wall_ms"],
                   compile_s=rows[0]["compile_s"])
      del runner
    return out

  def dense_llama(self, deadline: float) -> dict[str, Any]:
    p = self.profile
    return self._sweep_part(p.llama, p.llama_sweep, deadline, keep_best=False)

  def keep_dense(self, runner: Any, row: dict[str, Any]) -> None:
    self.dense_runner, self.dense_overrides = runner, row["overrides"]
    self.dense_first_loss = row["first_loss"]

  def _dense(self) -> tuple[Any, dict[str, Any]]:
    """GPT-2-medium's best dense runner (the first sweep point if that part did not run)."""
    if self.dense_runner is None:
      point = self.profile.gpt2_sweep[0]
      base, vocab, _ = gpu_train.SIZES[self.profile.gpt2]
      runner, facts = gpu_train.build({**base, **TRAIN_LAYOUT, **point}, vocab, ())
      self.keep_dense(runner, {"overrides": point, **facts})
    return self.dense_runner, self.dense_overrides

  def versus_dense(self, label: str, rules: tuple, ratio_of: str) -> dict[str, Any]:
    """`label` (the reparam `rules`) built at dense's best point, timed interleaved with
    dense; ratio = its step time or its tokens/s over dense's (`ratio_of`)."""
    dense, point = self._dense()
    base, vocab, _ = gpu_train.SIZES[self.profile.gpt2]
    runner, facts = gpu_train.build({**base, **TRAIN_LAYOUT, **point}, vocab, rules)
    rows = self._time({"dense": dense, label: runner})
    del runner
    gc.collect()
    mine, theirs = rows[label], rows["dense"]
    ratio = (mine["wall_ms"] / theirs["wall_ms"] if ratio_of == "step"
             else mine["tokens_per_sec"] / theirs["tokens_per_sec"])
    return {"point": describe({**point, **TRAIN_LAYOUT}), "variant": label, "rules": rules,
            "ratio_of": ratio_of, "ratio": ratio, "mfu": mine["mfu"],
            "tokens_per_sec": mine["tokens_per_sec"], "step_ms": mine["wall_ms"],
            "dense_step_ms": theirs["wall_ms"], "dense_tokens_per_sec": theirs["tokens_per_sec"],
            "dense_mfu": theirs["mfu"], "compile_s": facts["compile_s"],
            "state_gib": facts["state_gib"],
            "dense_state_gib": gpu_train.nbytes(dense.state) / 2**30,
            "first_loss": facts["first_loss"], "dense_first_loss": self.dense_first_loss}

  def identity(self, deadline: float) -> dict[str, Any]:
    del deadline
    return self.versus_dense("identity", ((".*", "identity"),), "step")

  def lowrank(self, deadline: float) -> dict[str, Any]:
    del deadline
    rank = gpu_train.SIZES[self.profile.gpt2][2]  # width / 4
    return self.versus_dense(f"lowrank(r={rank})",
                             ((gpu_train.PROJECTIONS, f"lowrank(rank={rank})"),), "tokens")

  def lora(self, deadline: float) -> dict[str, Any]:
    del deadline
    r = self.profile.lora_rank
    return self.versus_dense(f"lora(r={r})", ((gpu_train.PROJECTIONS,
                                              f"lora(rank={r}, alpha={2 * r})"),
                                             (".*", "frozen")), "step")

  def dense_gpt2_unrolled(self, deadline: float) -> dict[str, Any]:
    del deadline
    # The ratio parts are done: free the scanned runner before the unrolled one builds.
    self.dense_runner = None
    gc.collect()
    point = dict(self.dense_overrides or self.profile.gpt2_sweep[0])
    point.pop("model.scan_unroll", None)
    rows, _ = self.sweep(self.profile.gpt2, ({**point, "model.scan_layers": False},),
                         math.inf, keep_best=False)
    (row,) = rows
    if "tokens_per_sec" not in row:
      raise RuntimeError(row["status"])
    scanned = self.result["parts"].get("dense_gpt2_medium", {})
    return {"point": row["point"], "sweep": rows, "mfu": row["mfu"],
            "tokens_per_sec": row["tokens_per_sec"], "step_ms": row["wall_ms"],
            "compile_s": row["compile_s"],
            # Timed apart from the scanned step (one alive at a time): GPU steps repeat
            # to within a percent, a CPU's do not.
            "vs_scanned_step": (row["wall_ms"] / scanned["step_ms"]
                                if scanned.get("step_ms") else None)}

  # ---- generation -------------------------------------------------------------------------

  def generation(self, deadline: float) -> dict[str, Any]:
    if self.torch_python is None:
      return {"status": "skipped", "reason": "no interpreter with torch (pass --torch_python)"}
    calls = []
    for args in self.profile.generation:
      left = deadline - time.perf_counter()
      if left < 10:
        calls.append({"args": args, "status": "skipped: the part's time cap"})
        continue
      calls.append(self._generate(args, left))
      _say(f"  batch {args['batch']}: " + (
          f"reparam_jax {calls[-1]['tokens_per_s']['jax']:,.1f} tokens/s, transformers "
          f"{calls[-1]['tokens_per_s']['torch']:,.1f} (×{calls[-1]['ratio']:.2f}), "
          f"mismatches {calls[-1]['token_mismatches']}/{args['rounds']}"
          if calls[-1]["status"] == "ok" else calls[-1]["status"]))
    done = [c for c in calls if c["status"] == "ok"]
    if not done:
      raise RuntimeError("; ".join(c["status"] for c in calls))
    worst = min(done, key=lambda c: c["ratio"])
    return {"calls": calls, "ratio": worst["ratio"], "at_batch": worst["batch"],
            "tokens_per_sec": worst["tokens_per_s"]["jax"],
            "torch_tokens_per_sec": worst["tokens_per_s"]["torch"],
            "jax_first_call_s": worst["jax_first_call_s"],
            **({"status": "partial"} if len(done) < len(calls) else {})}

  def _generate(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.generate_vs_torch", "--torch_python", self.torch_python,
           "--cache", "static"] + (["--compile"] if self.profile.generation_compile else [])
    for key, value in args.items():
      cmd += [f"--{key}", str(value)]
    # Like for like: JAX's default float32 matmul is TF32 on a GPU, torch's is not.  The
    # child's JAX must not preallocate: this process holds most of the GPU already.
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
               XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=os.pathsep.join(
                   [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out: dict[str, Any] = {"args": args, "command": " ".join(cmd[1:])}
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return {**out, "status": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
      tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:400]
      return {**out, "status": f"failed (exit {proc.returncode}): {tail}"}
    return {**out, **json.loads(lines[-1]), "status": "ok"}

  # ---- the run ------------------------------------------------------------------------------

  def run(self, parts: list[str]) -> dict[str, Any]:
    fns = {"dense_gpt2_medium": self.dense_gpt2, "identity": self.identity,
           "lowrank": self.lowrank, "lora": self.lora, "dense_llama3_2_1b": self.dense_llama,
           "generation": self.generation, "dense_gpt2_medium_unrolled": self.dense_gpt2_unrolled}
    for part in PARTS:
      if part in parts:
        self.run_part(part, fns[part])
    self.dense_runner = None
    self.save()
    _say("\n" + self.table())
    return self.result

  def table(self) -> str:
    m = self.result["machine"]
    rows = []
    for part, r in self.result["parts"].items():
      figure = GOALS[part][0]
      shown = (f"MFU {r['value']:.1%}" if figure == "mfu" else f"×{r['value']:.3f}"
               ) if r.get("value") is not None else r["status"]
      rows.append({"part": part, "at": r.get("point") or r.get("best") or
                   (f"batch {r['at_batch']}" if "at_batch" in r else "–"),
                   "figure": shown, "tokens_per_sec": r.get("tokens_per_sec"),
                   "goal": GOALS[part][3],
                   "met": {True: "met", False: "not met", None: "–"}[r.get("goal_met")],
                   "wall_s": r["wall_s"]})
    head = (f"{m['device']} ({m['platform']}), commit {m['commit']}, jax {m['jax']}, "
            f"{self.result['elapsed_s']:.0f} s of a {self.result['budget_s']:.0f} s budget\n\n")
    return head + markdown(rows, [("part", "part", "s"), ("at", "at", "s"),
                                  ("figure", "figure", "s"), ("tokens_per_sec", "tokens/s", ",.0f"),
                                  ("goal", "goal", "s"), ("met", "met", "s"),
                                  ("wall_s", "wall s", ".0f")])


# CPU compiles in the smoke: the figures are not the point, the seconds are.
_SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU (CI)")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
  parser.add_argument("--budget_s", type=float, default=0.0,
                      help="the whole run's seconds (0: the profile's: 540 on a GPU)")
  parser.add_argument("--torch_python", default=None,
                      help="interpreter with torch and transformers for the generation part "
                      "(default: $REPARAM_TORCH_PYTHON, else .venv-py311/bin/python)")
  parser.add_argument("--commit", default="", help="the code's commit (default: git's HEAD)")
  parser.add_argument("--out", default="workdirs/bench/gpu_suite.json")
  args = parser.parse_args(argv)
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
  profile = SMOKE if args.smoke else GPU
  if args.smoke and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_SMOKE_XLA_FLAGS}".strip()
  # JAX takes 75 % of a GPU by default; 85 % gives the sweeps more room and still leaves
  # the generation part's child (JAX without preallocation, and torch) about 12 GiB of an
  # 80 GB card.  Read when JAX starts its backend, so set before.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.85")
  suite = Suite(profile, args.out, peer_process.torch_python(args.torch_python),
                args.budget_s or profile.budget_s, args.commit or commit_of_checkout())
  return suite.run(parts)


if __name__ == "__main__":
  main(sys.argv[1:])
