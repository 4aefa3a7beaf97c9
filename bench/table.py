"""The benchmarks' printed tables."""

from __future__ import annotations

from typing import Any


def markdown(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
  """Markdown table; cols are (key, header, format); a missing value prints as –."""
  head = "| " + " | ".join(h for _, h, _ in cols) + " |"
  sep = "|" + "|".join("---" for _ in cols) + "|"
  body = ["| " + " | ".join(format(r[k], f) if r.get(k) is not None else "–"
                            for k, _, f in cols) + " |" for r in rows]
  return "\n".join([head, sep, *body])
