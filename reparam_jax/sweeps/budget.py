"""Budget-matched rows: solve a transform's size argument for a budget relative to another row."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
  """Placeholder schema; the solver is written in this module."""

  measure: str
  fraction: float = 1.0
