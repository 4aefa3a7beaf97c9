"""Instruction data: prompt/response records as rows whose loss falls on the response only.

A JSON Lines file (`data.source = "jsonl:GLOB"`) holds one example a line,
`{"prompt": "...", "response": "..."}`; the field names are
`data.prompt_field` and `data.response_field` (setting the latter is what
turns this reader on in the `lm` task), and `data.input_field` names an
optional context field, joined to the prompt by a blank line: the Alpaca
layout is `prompt_field="instruction"`, `input_field="input"`,
`response_field="output"`.  The prompt is written into
`data.prompt_template` (its `{prompt}`), so the default reads

    ### Instruction:
    <prompt>

    ### Response:
    <response><EOS>

Each example is one row of `seq_len + 1` tokens: the tokenizer's BOS where
it starts every text (`document_boundaries`), the templated prompt, the
response, the tokenizer's EOS (so the model learns to stop; a tokenizer
without one, the char tokenizer, adds none), then padding.  Prompt and
response are tokenized separately, so a token never straddles the boundary
and the weights are exact.  The weight of a target (the token at position
j + 1, predicted at j) is 1 on the response and its EOS and 0 on the
prompt and on padding: the loss is the mean over response tokens, as in
Alpaca's and TRL's completion-only training.  An example longer than a row
loses the end of its response (counted and printed); one whose prompt alone
fills the row trains on nothing.  With `data.packing="first_fit"` the
training rows are packed (`pack`): several examples a row, each its own
segment that attends only within itself; evaluation keeps one example a row.

A bad record (not an object, a missing field, a value that is not a string)
is a one-line `UserError` naming the file and line, or skipped and counted
under `data.skip_malformed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from reparam_jax.data import sources
from reparam_jax.data.pipeline import host_slice
from reparam_jax.data.sources.jsonl import JsonLines
from reparam_jax.data.tokenizers import Tokenizer, document_boundaries
from reparam_jax.errors import UserError

DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclasses.dataclass(frozen=True)
class InstructionFormat:
  """Which fields of a record are the prompt, its context and the response, and the
  template the prompt is written into."""

  response_field: str = "response"
  prompt_field: str = "prompt"
  input_field: str = ""  # Alpaca's optional context ("input"): "" = none
  template: str = DEFAULT_TEMPLATE

  def __post_init__(self):
    if "{prompt}" not in self.template:
      raise UserError(f"data.prompt_template {self.template!r} has no {{prompt}}; write where "
                      "the prompt goes, e.g. 'Question: {prompt}\\nAnswer: '")
    try:
      self.template.format(prompt="")
    except (KeyError, IndexError, ValueError) as e:
      raise UserError(f"data.prompt_template {self.template!r}: {e!r}; the only field is "
                      "{prompt} (write a literal brace as {{ or }})") from None

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict) -> InstructionFormat | None:
    """The format `data` asks for, or None when `data.response_field` is unset (plain text)."""
    if not data.get("response_field"):
      return None
    return cls(response_field=data.response_field,
               prompt_field=data.get("prompt_field") or "prompt",
               input_field=data.get("input_field") or "",
               template=data.get("prompt_template") or DEFAULT_TEMPLATE)

  def prompt_text(self, prompt: str, context: str = "") -> str:
    """The text before the response: the prompt (and its context) in the template."""
    return self.template.format(prompt=f"{prompt}\n\n{context}" if context else prompt)


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # templated
  response: str


def read_examples(spec: str, fmt: InstructionFormat, skip_malformed: bool = False
                  ) -> list[Example]:
  """The examples of a `jsonl:GLOB` source, in file order."""
  source = sources.open_source(spec, skip_malformed=skip_malformed)
  if not isinstance(source, JsonLines):
    raise UserError(f"data source {spec!r}: instruction data (data.response_field="
                    f"{fmt.response_field!r}) is read from JSON Lines; write jsonl:PATH")
  if "field" in source.spec.options:
    raise UserError(f"data source {spec!r}: ?field= names a plain-text field; with "
                    "data.response_field set, the fields are data.prompt_field and "
                    "data.response_field: drop ?field=")
  wanted = [fmt.prompt_field, fmt.response_field]
  examples = []
  for piece in source.pieces():
    for where, record in source.records(piece):
      if not isinstance(record, dict):
        source.malformed(where, f"a JSON {_json_type(record)}, not an object with fields "
                         f"{', '.join(map(repr, wanted))}")
        continue
      bad = _bad_field(record, wanted, fmt.input_field)
      if bad:
        source.malformed(where, f"{bad} (fields: {', '.join(record) or 'none'}); name the "
                         "fields with data.prompt_field / data.response_field")
        continue
      context = (record.get(fmt.input_field) or "") if fmt.input_field else ""
      examples.append(Example(fmt.prompt_text(record[fmt.prompt_field], context),
                              record[fmt.response_field]))
  if not examples:
    raise UserError(f"data source {spec!r} has no examples")
  return examples


def _bad_field(record: dict[str, Any], required: Sequence[str], optional: str) -> str:
  """What is wrong with a record's fields ('' if nothing)."""
  for name in required:
    if name not in record:
      return f"no field {name!r}"
    if not isinstance(record[name], str):
      return f"field {name!r} is a JSON {_json_type(record[name])}, not a string"
  if optional and record.get(optional) is not None and not isinstance(record[optional], str):
    return f"field {optional!r} is a JSON {_json_type(record[optional])}, not a string"
  return ""


def _json_type(value: Any) -> str:
  """JSON's name for the type of a parsed value."""
  names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
           dict: "object", type(None): "null"}
  return names.get(type(value), type(value).__name__)


@dataclasses.dataclass
class Rows:
  """Examples as model rows: `tokens [N, L + 1]` and target `weights [N, L]`; packed rows
  also have `segment_ids` and `positions [N, L + 1]` (the lm task's first_fit fields)."""

  tokens: np.ndarray
  weights: np.ndarray
  lengths: np.ndarray  # [N] tokens of each row that are not padding
  num_examples: int
  truncated: int  # examples whose response was cut at the row's end
  empty: int  # examples with no response token left in the row (their weights are all 0)
  segment_ids: np.ndarray | None = None  # packed: 1, 2, ... per example, 0 on padding
  positions: np.ndarray | None = None  # packed: each example's own positions 0, 1, ...

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # a grain MapDataset source
    row = {"tokens": self.tokens[i], "weights": self.weights[i]}
    if self.segment_ids is not None:
      row.update(segment_ids=self.segment_ids[i], positions=self.positions[i])
    return row

  def describe(self, what: str) -> str:
    rows = f" in {len(self)} rows" if self.segment_ids is not None else ""
    return (f"{what}: {self.num_examples} examples{rows}, {int(self.weights.sum())} response "
            f"tokens; {self.truncated} cut at the row's end, {self.empty} with no response "
            "token left")


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
  """Each prompt's ids as training saw them: BOS (where the tokenizer starts texts with one)
  then the text."""
  bos, _ = document_boundaries(tokenizer)
  return [bos + ids.tolist() for ids in _encode_all(tokenizer, prompts)]


def encode_rows(tokenizer: Tokenizer, examples: Sequence[Example], seq_len: int,
                pad_id: int = 0) -> Rows:
  """Each example as one row (module docstring): response and EOS weighted 1, the rest 0."""
  _, eos = document_boundaries(tokenizer)
  prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
  responses = _encode_all(tokenizer, [e.response for e in examples])
  tokens = np.full((len(examples), seq_len + 1), pad_id, np.int32)
  is_response = np.zeros((len(examples), seq_len + 1), np.float32)
  lengths = np.zeros(len(examples), np.int32)
  truncated = empty = 0
  for i, (prompt, response) in enumerate(zip(prompts, responses)):
    ids = prompt + response.tolist() + eos
    n = lengths[i] = min(len(ids), seq_len + 1)
    tokens[i, :n] = ids[:n]
    is_response[i, len(prompt):n] = 1.0
    truncated += len(ids) > seq_len + 1
    # A response token is a target only from position 1 on (a row's first token is no target).
    empty += not is_response[i, 1:].any()
  return Rows(tokens, is_response[:, 1:], lengths, len(examples), truncated, empty)


def pack(rows: Rows, seed: int) -> Rows:
  """One-example rows packed into fewer rows, each example a segment (`data.packing=first_fit`).

  The model attends within a segment only and positions restart at 0 in each,
  so an example computes what it would alone; the target that would cross from
  one example into the next weighs 0.  Examples are taken in a seeded random
  order, each into the fullest row it still fits (best fit), so the rows are
  the same in every epoch and after a resume.
  """
  width = rows.tokens.shape[1]  # seq_len + 1
  # Rows with room left, by how much: open[c] holds the rows with exactly c tokens free.
  open_rows: list[list[int]] = [[] for _ in range(width + 1)]
  num_open = np.zeros(width + 1, np.int64)
  members: list[list[int]] = []
  for i in np.random.default_rng(seed).permutation(len(rows)):
    n = int(rows.lengths[i])
    fits = np.flatnonzero(num_open[n:])
    if len(fits):
      free = n + int(fits[0])
      row = open_rows[free].pop()
      num_open[free] -= 1
    else:
      free, row = width, len(members)
      members.append([])
    members[row].append(int(i))
    if free - n:
      open_rows[free - n].append(row)
      num_open[free - n] += 1
  tokens = np.zeros((len(members), width), np.int32)
  segment_ids = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  weights = np.zeros((len(members), width - 1), np.float32)
  lengths = np.zeros(len(members), np.int32)
  for r, examples in enumerate(members):
    at = 0
    for segment, i in enumerate(examples, start=1):
      n = int(rows.lengths[i])
      tokens[r, at:at + n] = rows.tokens[i, :n]
      segment_ids[r, at:at + n] = segment
      positions[r, at:at + n] = np.arange(n)
      # Targets at + 1 .. at + n - 1 are this example's; target at + n - 1 → at + n is not.
      weights[r, at:at + n - 1] = rows.weights[i, :n - 1]
      at += n
    lengths[r] = at
  return dataclasses.replace(rows, tokens=tokens, weights=weights, lengths=lengths,
                             segment_ids=segment_ids, positions=positions)


def eval_batches(rows: Rows, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Every row once, in order, in batches of `global_batch` (the last padded with rows of
  weight 0); this host's share of each."""
  for b in range(0, len(rows), global_batch):
    tokens, weights = rows.tokens[b:b + global_batch], rows.weights[b:b + global_batch]
    pad = global_batch - len(tokens)  # static shapes
    if pad:
      tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
      weights = np.concatenate([weights, np.zeros((pad, weights.shape[1]), np.float32)])
    yield host_slice({"tokens": tokens, "weights": weights})


def _encode_all(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  encode_batch = getattr(tokenizer, "encode_batch", None)  # a Hugging Face tokenizer's, threaded
  if encode_batch is not None:
    return encode_batch(list(texts))
  return [tokenizer.encode(t) for t in texts]
