"""The incremental-learning experiment: train both arms, score both tasks after each stage.

Adapter arm (one frozen base, `AdapterBank` with the head carried as a
module_to_save):
  (a) after stage 1: base + adapter A + head A on task 1;
  (b) after stage 2: the bank holds A and B; task 2 with B active, then
      `switch('sst2')` back to A on the *stage-2 run's* base, task 1 again;
      also one batch mixing task-1 and task-2 rows, routed to A and B per row.
  The base (every leaf outside the adapters and heads) of the two runs is
  compared bit for bit, and so are task 1's logits before and after.
Full fine-tuning arm:
  (a) after stage 1: the stage-1 model on task 1;
  (b) after stage 2: the stage-2 encoder with stage 1's head on task 1, and
      the stage-2 model on task 2.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from reparam_jax.incremental import scoring, stages
from reparam_jax.reparam.adapters import AdapterBank

TASK1, TASK2 = "sst2", "order"
MIXED_ROWS = 128  # rows of each task in the per-row routed batch


def train_arms(root: str, overrides: dict[str, str] | None = None,
               arms: dict[str, tuple[stages.Stage, stages.Stage]] = stages.ARMS
               ) -> dict[str, float]:
  """Runs every stage (stage 1 before stage 2); returns each stage's wall seconds."""
  return {s.name: stages.run_stage(root, s, overrides) for pair in arms.values() for s in pair}


def adapter_arm(root: str, arm: tuple[stages.Stage, stages.Stage]) -> dict[str, Any]:
  one = scoring.load(stages.stage_dir(root, arm[0]), arm[0].name)
  two = scoring.load(stages.stage_dir(root, arm[1]), arm[1].name)
  bank = AdapterBank.create(one.params, one.rp, modules_to_save=(scoring.HEAD,))
  bank = bank.add(TASK1, params=one.params).add(TASK2, params=two.params, activate=False)
  model = one.model  # both runs: the same architecture and rules
  same_base = scoring.identical(scoring.base_leaves(one.params, bank),
                                scoring.base_leaves(two.params, bank))

  # (a) after stage 1: the stage-1 run's params with A active.
  t1_before, y1 = scoring.logits(one.wrapped, bank.switch(TASK1).params(one.params), one.batches)
  # (b) after stage 2: B on task 2, then back to A, both on the stage-2 run's base.
  t2_after, y2 = scoring.logits(two.wrapped, bank.switch(TASK2).params(two.params), two.batches)
  t1_after, _ = scoring.logits(two.wrapped, bank.switch(TASK1).params(two.params), one.batches)

  # One batch, rows routed per row: the first MIXED_ROWS of each dev split, interleaved.
  ids1, mask1, _ = scoring.real_rows(one.batches)
  ids2, mask2, _ = scoring.real_rows(two.batches)
  n = min(MIXED_ROWS, len(ids1), len(ids2))
  ids = np.empty((2 * n, ids1.shape[1]), ids1.dtype)
  mask = np.empty((2 * n, mask1.shape[1]), mask1.dtype)
  ids[0::2], ids[1::2], mask[0::2], mask[1::2] = ids1[:n], ids2[:n], mask1[:n], mask2[:n]
  index = np.tile([0, 1], n)
  routed = scoring.routed_logits(model, bank, [TASK1, TASK2], two.params, ids, mask, index)
  alone = np.empty_like(routed)
  alone[0::2], alone[1::2] = t1_after[:n], t2_after[:n]
  return {
      "task1_after_stage1": scoring.accuracy(t1_before, y1),
      "task1_after_stage2": scoring.accuracy(t1_after, y1),
      "task2_after_stage2": scoring.accuracy(t2_after, y2),
      "task1_logits_identical": bool(t1_before.tobytes() == t1_after.tobytes()),
      "base_identical": same_base,
      "base_leaves": len(scoring.base_leaves(one.params, bank)),
      "adapter_leaves": len(bank.layout),
      "routed_rows": 2 * n,
      "routed_task1_acc": scoring.accuracy(routed[0::2], y1[:n]),
      "routed_task2_acc": scoring.accuracy(routed[1::2], y2[:n]),
      "routed_same_predictions": bool(np.array_equal(routed.argmax(-1), alone.argmax(-1))),
      "routed_max_abs_diff": float(np.abs(routed - alone).max()),
      "trainer_task1": one.done.get("eval/accuracy"),
      "trainer_task2": two.done.get("eval/accuracy"),
  }


def full_arm(root: str, arm: tuple[stages.Stage, stages.Stage]) -> dict[str, Any]:
  one = scoring.load(stages.stage_dir(root, arm[0]), arm[0].name)
  two = scoring.load(stages.stage_dir(root, arm[1]), arm[1].name)
  t1_before, y1 = scoring.logits(one.wrapped, one.params, one.batches)
  t2_after, y2 = scoring.logits(two.wrapped, two.params, two.batches)
  # Stage 2's encoder, stage 1's head: what is left of task 1 after training task 2.
  mixed = {**two.params, scoring.HEAD: one.params[scoring.HEAD]}
  t1_after, _ = scoring.logits(one.wrapped, mixed, one.batches)
  return {
      "task1_after_stage1": scoring.accuracy(t1_before, y1),
      "task1_after_stage2": scoring.accuracy(t1_after, y1),
      "task2_after_stage2": scoring.accuracy(t2_after, y2),
      "task1_logits_identical": bool(t1_before.tobytes() == t1_after.tobytes()),
      "trainer_task1": one.done.get("eval/accuracy"),
      "trainer_task2": two.done.get("eval/accuracy"),
  }


def run(root: str, overrides: dict[str, str] | None = None,
        arms: dict[str, tuple[stages.Stage, stages.Stage]] = stages.ARMS) -> dict[str, Any]:
  """Trains what is not trained yet, then scores; returns the results by arm."""
  t0 = time.perf_counter()
  seconds = train_arms(root, overrides, arms)
  results = {"adapters": adapter_arm(root, arms["adapters"]), "full": full_arm(root, arms["full"])}
  results["seconds"] = {**seconds, "total": time.perf_counter() - t0}
  return results
