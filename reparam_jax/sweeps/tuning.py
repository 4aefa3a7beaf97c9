"""Per-row tuning on a held-out split carved from the training data."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tuning:
  """Placeholder schema; the tuner is written in this module."""

  metric: str
  goal: str = "max"
