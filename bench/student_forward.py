r"""Forward speed of a distilled student against its teacher, on the SST-2 dev set.

  REPARAM_DATA_DIR=../shared/data python -m bench.student_forward \
      --teacher=workdirs/sst2_minilm_finetune --student=workdirs/sst2_minilm_distill \
      [--rounds 7 --batch 128]

Both models are read back from their runs (latest checkpoint, their own config
and tokenizer) and run as plain classifiers: the jitted forward (logits) of
each, over the same dev sentences (SST-2's 872, or the runs' own labelled
`data.eval_source`) in batches padded to the config's seq_len.  Compilation happens before timing; the two alternate round by round,
so drift in the machine's load falls on both; each figure is the median over
rounds of one pass over the dev set.  Goal (issue 18): teacher/student ≥ 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax.core import meta

from reparam_jax.rundir.workdir import load_run
from reparam_jax.tasks.classify import ClassificationTask


def forward_pass(workdir: str, batch_size: int) -> tuple[Callable[[], None], dict[str, Any]]:
  """A closure running the model over the dev set once, and what it is."""
  run = load_run(workdir)
  config = ml_collections.ConfigDict(run.config.to_dict())
  with config.unlocked():
    config.task = "classify"  # a student's distill task adds the teacher: not timed here
    config.init_from = ""  # the run's own saved tokenizer is the one its weights use
    config.eval_batch_size = batch_size
  task = ClassificationTask(config, workdir)
  model = task.model()
  params = jax.device_put(meta.unbox(run.params))
  params = {k: v for k, v in params.items() if k != "distill_proj"}  # training-only projection
  batches = [(jax.device_put(b["ids"]), jax.device_put(b["padding_mask"]))
             for b in task.eval_batches()]
  logits = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask,
                                                    train=False)["logits"])

  def run_once() -> None:
    out = None
    for ids, mask in batches:
      out = logits(params, ids, mask)
    jax.block_until_ready(out)

  n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  return run_once, dict(workdir=workdir, layers=config.model.num_layers, params=n,
                        batches=len(batches), tokens_per_batch=int(np.size(batches[0][0])))


def compare(teacher: str, student: str, rounds: int, batch_size: int) -> dict[str, Any]:
  runs = {name: forward_pass(w, batch_size) for name, w in (("teacher", teacher),
                                                            ("student", student))}
  compile_s = {}
  for name, (fn, _) in runs.items():
    t0 = time.perf_counter()
    fn()
    compile_s[name] = time.perf_counter() - t0
  times: dict[str, list[float]] = {name: [] for name in runs}
  for r in range(rounds):
    order = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for name in order:
      t0 = time.perf_counter()
      runs[name][0]()
      times[name].append(time.perf_counter() - t0)
  med = {name: statistics.median(t) for name, t in times.items()}
  return dict(
      teacher=runs["teacher"][1], student=runs["student"][1], rounds=rounds,
      first_pass_s=compile_s, dev_pass_s=med,
      dev_pass_s_all={k: [round(x, 4) for x in v] for k, v in times.items()},
      speedup=med["teacher"] / med["student"])


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m bench.student_forward")
  parser.add_argument("--teacher", default="workdirs/sst2_minilm_finetune")
  parser.add_argument("--student", default="workdirs/sst2_minilm_distill")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args(argv)
  result = compare(args.teacher, args.student, args.rounds, args.batch)
  print(json.dumps(result, indent=2))
  t, s = result["dev_pass_s"]["teacher"], result["dev_pass_s"]["student"]
  print(f"dev-set forward (median of {args.rounds}): teacher {t * 1e3:.0f} ms "
        f"({result['teacher']['layers']} layers), student {s * 1e3:.0f} ms "
        f"({result['student']['layers']} layers): teacher/student = {result['speedup']:.2f} "
        "(goal ≥ 2)")


if __name__ == "__main__":
  main()
