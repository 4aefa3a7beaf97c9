r"""Incremental learning with adapters vs full fine-tuning: does task 1 survive task 2?

Issue 20 (seed 001's fine-tuning discussion; docs/incremental.md).  Task 1 is
SST-2 sentiment, task 2 "word order" (Tiny Shakespeare lines as written vs
word-shuffled, reparam_jax/data/word_order.py).  Two arms, two stages each
(configs/incremental/): LoRA adapter A then adapter B on one frozen pretrained
MiniLM, each with its own head; full fine-tuning on task 1 then on task 2 from
that model.  Then task-1 dev accuracy after each stage and task-2 dev accuracy
(reparam_jax/incremental/protocol.py), written as a table to
`<out>/README.md` with `results.json` beside it.

  REPARAM_DATA_DIR=/path/to/raw_data python experiments/incremental.py \
      --workdir=workdirs/incremental --out=experiments/results/incremental

Runs already finished under --workdir are read back, not retrained (run
the four `python -m reparam_jax.train` commands of the configs' docstrings
first, or let this do it).  Extra `--config.key=value` flags go to every
stage (e.g. `--config.num_steps=20` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reparam_jax.data import word_order
from reparam_jax.errors import exit_on_user_error
from reparam_jax.incremental import protocol, report

DATA = (
    "Task 2 data (`data.name='shakespeare_order'`, reparam_jax/data/word_order.py): every "
    f"line of Tiny Shakespeare with at least {word_order.MIN_WORDS} whitespace-separated "
    "words, shown once, either as written (label 1) or with its words randomly permuted "
    "(label 0; punctuation stays attached to its word; a permutation equal to the line is "
    "redrawn).  Splits: the LM builder's 90/10 split by character position, cut into "
    "lines; in each split exactly half the lines are shuffled, by a fixed seed "
    f"({word_order.SEED}), whatever `config.seed` is: 21,729 train / 2,407 dev lines.  It "
    "is a syntax task in another domain, unrelated to sentiment.")


@exit_on_user_error
def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="the four runs go in its subfolders")
  parser.add_argument("--out", default="", help="folder for README.md and results.json")
  parser.add_argument("--machine", default="2-core CPU box shared with other work, no "
                      "accelerator", help="what the README says the runs ran on")
  parser.add_argument("--notes", default="", help="a paragraph appended to the README")
  args, rest = parser.parse_known_args(argv)
  overrides = dict(a[len("--config."):].split("=", 1) for a in rest if a.startswith("--config."))
  results = protocol.run(args.workdir, overrides)
  shown = [a for a in argv if not a.startswith("--notes")]  # the notes are printed below
  command = "REPARAM_DATA_DIR=... python experiments/incremental.py " + " ".join(shown)
  text = report.markdown(results, args.workdir, command, args.machine, data_paragraph=DATA,
                         notes=args.notes)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
      f.write(text)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
