"""Incremental learning with adapters vs full fine-tuning (issue 20; docs/incremental.md).

  stages.py    the two tasks' training runs of each arm, in order (stage 2 may read stage 1)
  scoring.py   a finished run read back; dev-set logits and accuracy; per-row adapter routing
  protocol.py  the experiment: train both arms, then score task 1 and task 2 after each stage
  report.py    the markdown table written to experiments/results/incremental/README.md

The command is experiments/incremental.py.
"""
