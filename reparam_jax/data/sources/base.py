"""A text source: where a corpus's documents come from, named by one string.

`data.source` (and each entry of `data.mixture`) is a spec string::

    SCHEME:TARGET[?key=value&key=value]

    jsonl:/corpora/web/*.jsonl.gz?field=text
    text:/corpora/books/**/*.txt?doc=paragraph
    parquet:/corpora/wiki/*.parquet?column=text
    arrayrecord:/corpora/shards/*.array_record
    tfds:c4/en:3.1.0?split=train&feature=text
    tiny_shakespeare                      # a name alone: a built-in dataset, else TFDS

(`$VARIABLES` and `~` in a path are expanded.)

A source yields documents (`str`) in a fixed order, split into *pieces*
(files, or index ranges of a random-access dataset) that can be read
independently: `prepare_data` gives each process its share of the pieces and
writes one shard per piece, so a killed run redoes only unfinished pieces.
Bad input (no such file, a glob that matches nothing, a missing field, bytes
that are not UTF-8) is a `UserError` naming the source; with
`skip_malformed=True` a malformed document is skipped and counted instead
(`skipped`), the meaning `data.skip_malformed` has for labelled TSVs.
"""

from __future__ import annotations

import abc
import dataclasses
import glob as globlib
import os
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

from reparam_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed spec string: `scheme`, `target` (path glob or dataset name), `options`."""

  scheme: str
  target: str
  options: Mapping[str, str]
  text: str  # as the user wrote it, for error messages


def parse_spec(text: str, schemes: Sequence[str], default_scheme: str) -> Spec:
  """`SCHEME:TARGET?k=v&...`; a text without a known scheme is `default_scheme:text`."""
  text = text.strip()
  if not text:
    raise UserError("empty data source; set --config.data.source (e.g. jsonl:/path/*.jsonl)")
  scheme, sep, rest = text.partition(":")
  if not sep or scheme not in schemes:
    scheme, rest = default_scheme, text
  # A glob's own '?' wildcard is written [?]; a '?' followed by k=v pairs starts the options.
  target, options = rest, {}
  head, qmark, query = rest.rpartition("?")
  if qmark and query and all("=" in kv for kv in query.split("&")):
    target = head
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True))
  return Spec(scheme, target, options, text)


class Source(abc.ABC):
  """Documents of one spec, in a fixed order, in independently readable pieces."""

  scheme: ClassVar[str]
  # Allowed `?key=value` options and their defaults.
  option_defaults: ClassVar[Mapping[str, str]] = {}
  # One line for the registry's help text.
  summary: ClassVar[str] = ""

  def __init__(self, spec: Spec, *, skip_malformed: bool = False, raw_dir: str | None = None,
               tfds_dir: str | None = None):
    unknown = sorted(set(spec.options) - set(self.option_defaults))
    if unknown:
      allowed = ", ".join(self.option_defaults) or "none"
      raise UserError(f"data source {spec.text!r}: unknown option {unknown[0]!r} "
                      f"({self.scheme} takes: {allowed})")
    self.spec = spec
    self.options = {**self.option_defaults, **spec.options}
    self.skip_malformed = skip_malformed
    self.raw_dir = raw_dir  # the publishers' raw downloads (built-in datasets)
    self.tfds_dir = tfds_dir  # TFDS's data folder; None: $TFDS_DATA_DIR or TFDS's default
    self.skipped = 0  # malformed documents skipped so far (skip_malformed)

  @abc.abstractmethod
  def pieces(self) -> list[str]:
    """Names of the independently readable parts, in the source's order."""

  @abc.abstractmethod
  def documents(self, piece: str) -> Iterator[str]:
    """The documents of one piece, in order."""

  def __iter__(self) -> Iterator[str]:
    for piece in self.pieces():
      yield from self.documents(piece)

  def malformed(self, where: str, why: str) -> None:
    """Raises the one-line error, or counts a skip under `skip_malformed`."""
    if not self.skip_malformed:
      raise UserError(f"data source {self.spec.text!r}: {where}: {why}; fix the data or set "
                      "--config.data.skip_malformed=True to skip such documents")
    self.skipped += 1

  def decode(self, raw: bytes, where: str) -> str | None:
    """UTF-8 text of `raw`, or None (counted) for undecodable bytes under skip_malformed."""
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      self.malformed(where, f"not UTF-8 (byte {e.start})")
      return None


def expand_glob(spec: Spec) -> list[str]:
  """The files a path glob names, sorted (`**` recurses); none is a one-line error."""
  pattern = os.path.expandvars(os.path.expanduser(spec.target))
  if "$" in pattern:
    raise UserError(f"data source {spec.text!r}: {pattern} names an unset environment "
                    "variable; set it (e.g. REPARAM_DATA_DIR) or write the path out")
  if os.path.isdir(pattern):
    raise UserError(f"data source {spec.text!r}: {pattern} is a folder; give a glob of its "
                    f"files, e.g. {os.path.join(pattern, '*')}")
  files = sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
  if not files:
    hint = ("no such file" if not globlib.has_magic(pattern) else "the glob matches no file")
    raise UserError(f"data source {spec.text!r}: {hint} ({pattern}); check the path")
  return files


class FileSource(Source):
  """A source whose pieces are the files its glob matches, in sorted order."""

  def __init__(self, spec: Spec, **kwargs):
    super().__init__(spec, **kwargs)
    self._files = expand_glob(spec)

  def pieces(self) -> list[str]:
    return list(self._files)
