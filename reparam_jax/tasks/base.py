"""What every task shares (the interface itself is in `tasks/__init__.py`)."""

from __future__ import annotations

import ml_collections


class Task:
  """Defaults for the task classmethods that need no data."""

  # What the task's model is, for code that reads a run without building its task
  # (sample, export_hf, a pretrained init_from): a causal decoder LM that continues a
  # prompt, or an encoder–decoder that answers one.  Neither: an encoder.
  CAUSAL_LM = False
  ENCODER_DECODER = False

  @classmethod
  def inherited_tokenizer(cls, config: ml_collections.ConfigDict) -> str:
    """The folder whose tokenizer this task takes instead of fitting one ('' for none):
    `init_from`'s, for a run that starts from a pretrained model."""
    return config.get("init_from", "")

  @classmethod
  def holdout_unread(cls, config: ml_collections.ConfigDict) -> str | None:
    """Why `data.evaluate_on='holdout'` would not be what this task evaluates; None when
    it carves the held-out split from its training data (tuning, sweeps/tuning.py)."""
    return f"task {config.get('task')!r} carves no held-out split"
