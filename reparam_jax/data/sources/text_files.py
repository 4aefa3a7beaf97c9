"""`text:GLOB?doc=file|line|paragraph`: plain-text files.

A document is a whole file (`doc=file`, the default: books, source files), a
non-empty line (`doc=line`: one sentence or web page per line, as lm1b), or a
block of lines between blank lines (`doc=paragraph`).  Lines keep no line
break; a paragraph's lines are joined by "\\n".
"""

from __future__ import annotations

from collections.abc import Iterator

from reparam_jax.data.sources.base import FileSource
from reparam_jax.data.sources.files import open_binary
from reparam_jax.errors import UserError

_UNITS = ("file", "line", "paragraph")


class TextFiles(FileSource):
  scheme = "text"
  option_defaults = {"doc": "file"}
  summary = "plain-text files; a document per file, per line or per blank-line block"

  def __init__(self, spec, **kwargs):
    super().__init__(spec, **kwargs)
    if self.options["doc"] not in _UNITS:
      raise UserError(f"data source {spec.text!r}: doc={self.options['doc']!r}; use one of "
                      f"{', '.join(_UNITS)}")

  def documents(self, piece: str) -> Iterator[str]:
    unit = self.options["doc"]
    with open_binary(piece) as f:
      if unit == "file":
        text = self.decode(f.read(), piece)
        if text is not None and text.strip():
          yield text
        return
      block: list[str] = []
      for lineno, raw in enumerate(f, start=1):
        line = self.decode(raw, f"{piece}:{lineno}")
        if line is None:
          continue
        line = line.rstrip("\r\n")
        if unit == "line":
          if line.strip():
            yield line
        elif line.strip():
          block.append(line)
        elif block:
          yield "\n".join(block)
          block = []
      if block:
        yield "\n".join(block)
