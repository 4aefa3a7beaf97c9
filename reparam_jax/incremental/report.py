"""The markdown results table of the incremental-learning experiment."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

from reparam_jax.incremental import stages

ROWS = (("task1_after_stage1", "task 1 (SST-2 dev, 872) after stage 1"),
        ("task1_after_stage2", "task 1 (SST-2 dev, 872) after stage 2"),
        ("task2_after_stage2", "task 2 (word order dev) after stage 2"))


def wall_seconds(root: str, stage: stages.Stage) -> float | None:
  """A run's wall time: its config.json (written at the start) to its done.json."""
  d = stages.stage_dir(root, stage)
  try:
    return os.path.getmtime(os.path.join(d, "done.json")) - os.path.getmtime(
        os.path.join(d, "config.json"))
  except OSError:
    return None


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def table(results: dict[str, Any]) -> str:
  a, f = results["adapters"], results["full"]
  lines = ["| | LoRA adapters (base frozen) | full fine-tuning |", "|---|---|---|"]
  for key, label in ROWS:
    lines.append(f"| {label} | {a[key]:.4f} | {f[key]:.4f} |")
  drop = {k: r["task1_after_stage1"] - r["task1_after_stage2"] for k, r in (("a", a), ("f", f))}
  lines.append(f"| task 1 forgotten (points) | {100 * drop['a']:.1f} | {100 * drop['f']:.1f} |")
  lines.append(f"| task 1 logits bit-identical before/after | {a['task1_logits_identical']} | "
               f"{f['task1_logits_identical']} |")
  return "\n".join(lines)


def markdown(results: dict[str, Any], root: str, command: str, machine: str,
             arms: dict[str, tuple[stages.Stage, stages.Stage]] = stages.ARMS,
             data_paragraph: str = "", notes: str = "") -> str:
  a = results["adapters"]
  walls = []
  for pair in arms.values():
    for s in pair:
      w = wall_seconds(root, s)
      walls.append(f"{s.name} {w / 60:.1f} min" if w is not None else f"{s.name} ?")
  walls_text = ", ".join(walls)
  total_min = results["seconds"]["total"] / 60
  same = a["routed_same_predictions"]
  out = [
      "# Incremental learning: adapters vs full fine-tuning (issue 20)", "",
      f"Command: `{command}`", "",
      (f"Commit: {commit()}.  Machine: {machine} ({platform.machine()}, Python "
       f"{platform.python_version()}).  One seed."), "",
      (f"Wall time per run: {walls_text}; this command: {total_min:.1f} min (runs already "
       "trained are read back, not retrained)."), "",
      table(results), "",
      (f"Adapter arm checks: the {a['base_leaves']} base leaves (everything but the "
       f"{a['adapter_leaves']} adapter and head leaves) of the stage-1 and stage-2 runs are "
       f"bit-identical: {a['base_identical']}.  One batch of {a['routed_rows']} dev rows "
       "(task 1 and task 2 interleaved) routed per row to adapter A / B and their heads: "
       f"task 1 accuracy {a['routed_task1_acc']:.4f}, task 2 {a['routed_task2_acc']:.4f} on "
       f"those rows; same predictions as each adapter alone: {same} (max |Δlogit| "
       f"{a['routed_max_abs_diff']:.2e})."), "",
      ("The trainer's own final dev accuracy (done.json) of the stage-1 / stage-2 runs: "
       f"adapters {a['trainer_task1']}, {a['trainer_task2']}; full "
       f"{results['full']['trainer_task1']}, {results['full']['trainer_task2']}."),
  ]
  if data_paragraph:
    out += ["", data_paragraph]
  if notes:
    out += ["", notes]
  return "\n".join(out) + "\n"
