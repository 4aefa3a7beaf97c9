"""The README and docs/*.md show only commands, flags, configs and make targets that exist.

Every `python -m reparam_jax.X ...` (and `python -m bench.X ...`) in a code block
or code span of README.md and docs/*.md is checked in this process, without
running anything: the module is a command (a `main` and a `__main__` block);
each `--flag` is one the command defines (its argparse parser, captured when
its `main` builds it; the two hand-parsed commands are listed below); option
values convert to the option's type and choices; `--config=FILE` exists and
loads with the project's loader; each `--config.a.b=v` names a key of that
config and type-checks (`reparam_jax.config.load.apply_overrides`).  A value
written as a placeholder (`RUN`, `<name>`, `…`, `$VAR`) is not checked, only
its flag.  Every `make X` shown is a target of the Makefile, and the README's
layout table lists every folder of `reparam_jax/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import inspect
import os
import re
import shlex
from unittest import mock

import ml_collections
import pytest

from reparam_jax.config import load as config_load
from reparam_jax.config.base import base_config
from reparam_jax.errors import UserError
from reparam_jax.hf import pretrained
from reparam_jax.training import devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))

SHELL_OPERATORS = {"|", "\\|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", "2>", "1>"}


# ---------------------------------------------------------------------------
# Extracting commands from Markdown


@dataclasses.dataclass(frozen=True)
class Snippet:
  doc: str
  line: int
  text: str  # one command line, continuations joined

  def where(self) -> str:
    return f"{self.doc}:{self.line}"


def _code_regions(text: str) -> list[tuple[int, str, str]]:
  """(first line number, kind, text) of the fenced blocks, indented lines and code spans."""
  regions, prose = [], []
  lines = text.split("\n")
  fence, block, start, continued = None, [], 0, False
  for number, line in enumerate(lines, 1):
    stripped = line.lstrip()
    if fence is None and stripped.startswith(("```", "~~~")):
      fence, block, start = stripped[:3], [], number + 1
      prose.append("")
      continue
    if fence is not None:
      if stripped.startswith(fence):
        regions.append((start, "block", "\n".join(block)))
        fence = None
      else:
        block.append(line)
      prose.append("")
      continue
    if continued or (line.startswith("    ") and "python -m" in line and "`" not in line):
      if continued:  # a continuation line of an indented command
        regions[-1] = (regions[-1][0], "block", regions[-1][2] + "\n" + line)
      else:  # an indented code block's command
        regions.append((number, "block", line))
      continued = line.rstrip().endswith("\\")
      prose.append("")
      continue
    prose.append(line)
  prose_text = "\n".join(prose)
  for match in re.finditer(r"(?<!`)`([^`]+?)`(?!`)", prose_text, flags=re.S):
    if "\n\n" in match.group(1):
      continue
    number = prose_text.count("\n", 0, match.start()) + 1
    regions.append((number, "span", match.group(1).replace("\n", " ")))
  return regions


def snippets(doc: str, pattern: str) -> list[Snippet]:
  """The command lines of `doc` in which `pattern` (a regex) occurs."""
  with open(os.path.join(REPO, doc), encoding="utf-8") as f:
    text = f.read()
  found = []
  for first, kind, region in _code_regions(text):
    if kind == "span":
      if re.search(pattern, region):
        found.append(Snippet(doc, first, region))
      continue
    lines = region.split("\n")
    i = 0
    while i < len(lines):
      number, joined = first + i, lines[i]
      while joined.rstrip().endswith("\\") and i + 1 < len(lines):
        i += 1
        joined = joined.rstrip()[:-1] + " " + lines[i].strip()
      if re.search(pattern, joined):
        found.append(Snippet(doc, number, joined))
      i += 1
  return found


def _tokens(text: str) -> list[str]:
  try:
    return shlex.split(text, comments=True)
  except ValueError:  # an unbalanced quote in prose-like usage text
    return text.split()


@dataclasses.dataclass
class Command:
  snippet: Snippet
  module: str
  args: list[str]


def commands(docs: list[str] = DOCS) -> list[Command]:
  found = []
  for doc in docs:
    for snippet in snippets(doc, r"python3? -m (reparam_jax|bench)\b"):
      tokens = _tokens(snippet.text)
      for i, token in enumerate(tokens[:-2]):
        if not (token.endswith(("python", "python3")) and tokens[i + 1] == "-m"):
          continue
        module = re.match(r"[A-Za-z0-9_.]*[A-Za-z0-9_]", tokens[i + 2])
        if not module or not module.group(0).startswith(("reparam_jax.", "bench.")) \
            or is_placeholder(module.group(0).rsplit(".", 1)[1]):
          continue  # `python -m reparam_jax.X`: any command
        args = []
        for arg in tokens[i + 3:]:
          if arg in SHELL_OPERATORS or (arg.startswith("python") and arg != "python"):
            break
          args.append(arg)
        found.append(Command(snippet, module.group(0), args))
  return found


# ---------------------------------------------------------------------------
# What a command accepts


def is_placeholder(value: str) -> bool:
  """`RUN`, `DIR`, `<name>`, `…`, `...`, `$VAR`, `configs/<area>/x.py`: not a real value."""
  return (any(s in value for s in ("<", "…", "...", "$", "*"))
          or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None)


@dataclasses.dataclass
class Interface:
  options: dict[str, argparse.Action | None]  # "--name" → its action (None: hand-parsed)
  loads_config: bool  # takes --config=FILE and --config.a.b=v itself
  passes_overrides: bool  # passes --config.a.b=v on to each run it starts


class _Captured(BaseException):
  """Stops a command's `main` once its parser is built (not an Exception: no handler eats it)."""


def _distributed_options() -> dict[str, argparse.Action]:
  parser = argparse.ArgumentParser(add_help=False)
  devices.add_distributed_flags(parser)
  return dict(parser._option_string_actions)


# Commands that read `--name=value` by hand instead of with argparse: the
# names they read (reparam_jax/train.py with training/devices.py;
# reparam_jax/regularizers/threshold.py).
HAND_PARSED = {
    "reparam_jax.train": lambda: Interface(
        {"--workdir": None, **_distributed_options()}, loads_config=True, passes_overrides=False),
    "reparam_jax.regularizers.threshold": lambda: Interface(
        {"--workdir": None, "--thresholds": None, "--per_layer": None},
        loads_config=False, passes_overrides=False),
}

_interfaces: dict[str, Interface] = {}


def interface(module_name: str) -> Interface:
  """The flags of command `module_name`, read from the parser its `main` builds."""
  if module_name in _interfaces:
    return _interfaces[module_name]
  module = importlib.import_module(module_name)
  assert callable(getattr(module, "main", None)), f"{module_name} has no main()"
  assert 'if __name__ == "__main__":' in inspect.getsource(module), (
      f"{module_name} is not a command (no __main__ block)")
  if module_name in HAND_PARSED:
    _interfaces[module_name] = HAND_PARSED[module_name]()
    return _interfaces[module_name]
  captured, loads = {}, []

  def capture(self, args=None, namespace=None):
    captured["parser"] = self
    raise _Captured

  def fake_load(argv):
    loads.append(True)
    return ml_collections.ConfigDict(), []

  with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
       mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture), \
       mock.patch.object(config_load, "load", fake_load), \
       mock.patch.object(pretrained, "resolve", lambda config: config):
    try:
      module.main([])
    except _Captured:
      pass
  assert "parser" in captured, f"{module_name}.main() built no argparse parser"
  passes = getattr(module, "split_overrides", None) is not None
  _interfaces[module_name] = Interface(dict(captured["parser"]._option_string_actions),
                                       loads_config=bool(loads), passes_overrides=passes)
  return _interfaces[module_name]


# ---------------------------------------------------------------------------
# Checking one command


def _strip_brackets(arg: str) -> str:
  """`[--seed=0]` → `--seed=0` (usage lines mark optional flags with brackets)."""
  arg = arg.lstrip("[")
  while arg.endswith("]") and arg.count("]") > arg.count("["):
    arg = arg[:-1]
  return arg


def _check_value(flag: str, action: argparse.Action | None, value: str) -> str | None:
  if action is None or is_placeholder(value):
    return None
  if action.nargs == 0:
    return f"{flag} takes no value, the doc gives {flag}={value}"
  for alternative in value.split("|") if action.choices else [value]:
    try:
      converted = action.type(alternative) if callable(action.type) else alternative
    except (TypeError, ValueError):
      return f"{flag}={value}: not a valid {getattr(action.type, '__name__', action.type)}"
    if action.choices and converted not in action.choices:
      return f"{flag}={alternative}: not one of {list(action.choices)}"
  return None


def _check_config(spec: str, overrides: list[tuple[str, str]]) -> list[str]:
  path = spec.partition(":")[0]
  if is_placeholder(path):
    config = base_config()  # a placeholder config: its overrides must exist in every config
    config.lock()
  else:
    if not os.path.isfile(os.path.join(REPO, path)):
      return [f"--config={spec}: no such file"]
    try:
      config = config_load.load_config_file(os.path.join(REPO, spec))
    except UserError as e:
      return [f"--config={spec}: {e}"]
  found = []
  for key, value in overrides:
    if is_placeholder(key):
      continue  # `--config.<key>=<value>`
    if is_placeholder(value):
      value = None  # the key alone is checked
    try:
      if value is None:
        if key not in config_load.flat_keys(config):
          raise UserError(f"unknown config key {key!r}")
      else:
        config_load.apply_overrides(config, [(key, value)])
    except UserError as e:
      found.append(str(e))
  return found


def problems(command: Command) -> list[str]:
  """What is wrong with `command`; [] if the command line would be accepted."""
  try:
    accepted = interface(command.module)
  except (ImportError, AssertionError) as e:
    return [f"python -m {command.module}: {e}"]
  found, config_spec, overrides = [], None, []
  args = [_strip_brackets(a) for a in command.args]
  i = 0
  while i < len(args):
    arg = args[i]
    i += 1
    if not arg.startswith("--"):
      continue  # a positional argument, a value, or `...`
    flag, eq, value = arg.partition("=")
    if flag == "--config" and accepted.loads_config:
      if not eq and i < len(args):
        value, i = args[i], i + 1
      config_spec = value
      continue
    if flag.startswith("--config.") and (accepted.loads_config or accepted.passes_overrides):
      if not eq and i < len(args) and not args[i].startswith("-"):
        value, i = args[i], i + 1
      overrides.append((flag[len("--config."):], value))
      continue
    if flag not in accepted.options:
      found.append(f"python -m {command.module} has no flag {flag}")
      continue
    action = accepted.options[flag]
    if not eq and action is not None and action.nargs != 0 and i < len(args) \
        and not args[i].startswith("--"):
      value, eq, i = args[i], "=", i + 1  # `--out path` form
    if flag == "--config" and (accepted.loads_config or accepted.passes_overrides):
      config_spec = value
    elif eq:
      problem = _check_value(flag, action, value)
      if problem:
        found.append(problem)
  if accepted.loads_config and config_spec is None and overrides:
    config_spec = "configs/<file>.py"
  if config_spec is not None:
    found += _check_config(config_spec, overrides)
  return found


ALL_COMMANDS = commands()


def test_the_docs_show_commands():
  modules = {c.module for c in ALL_COMMANDS}
  assert {"reparam_jax.train", "reparam_jax.sample", "reparam_jax.sweep"} <= modules, modules
  assert len(ALL_COMMANDS) > 50, len(ALL_COMMANDS)


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_doc_is_accepted(doc):
  failures = [f"{c.snippet.where()}: {p}" for c in ALL_COMMANDS if c.snippet.doc == doc
              for p in problems(c)]
  assert not failures, "\n".join(failures)


def test_a_misspelt_flag_or_config_key_is_caught(tmp_path):
  doc = tmp_path / "bad.md"
  doc.write_text(
      "```bash\n"
      "python -m reparam_jax.sample --workdir=RUN --promt=\"x\"\n"
      "python -m reparam_jax.train --config=configs/lm/shakespeare_char.py --workdir=W \\\n"
      "    --config.optimizer.lrr=3e-4 --config.model.num_layers=six\n"
      "python -m reparam_jax.compress --workdir=W --recipe=R --out=O --finetune_steps=many\n"
      "python -m reparam_jax.train --config=configs/lm/missing.py --workdir=W\n"
      "python -m reparam_jax.nothing --workdir=W\n"
      "```\n"
      "Then `python -m reparam_jax.train --config=… --workdir=W --distributd`.\n",
      encoding="utf-8")
  found = [(c.snippet.line, p) for c in commands([str(doc)]) for p in problems(c)]
  text = "\n".join(f"{line}: {p}" for line, p in found)
  assert "2: python -m reparam_jax.sample has no flag --promt" in text, text
  assert "unknown config key 'optimizer.lrr'" in text, text
  assert "--config.model.num_layers=six: expected an integer" in text, text
  assert "--finetune_steps=many: not a valid int" in text, text
  assert "configs/lm/missing.py: no such file" in text, text
  assert "reparam_jax.nothing" in text, text
  assert "9: python -m reparam_jax.train has no flag --distributd" in text, text
  assert len(found) == 7, text


# ---------------------------------------------------------------------------
# make targets


def makefile_targets() -> set[str]:
  with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
    text = f.read()
  targets = set()
  for match in re.finditer(r"^([A-Za-z0-9_.\-/ $()]+?)\s*:(?![=:])", text, flags=re.M):
    targets.update(match.group(1).split())
  return targets


def make_invocations(docs: list[str] = DOCS) -> list[tuple[Snippet, str]]:
  found = []
  for doc in docs:
    for snippet in snippets(doc, r"(^|[\s;&|])make\s"):
      tokens = _tokens(snippet.text)
      for i, token in enumerate(tokens):
        if token != "make":
          continue
        for arg in tokens[i + 1:]:
          if arg in SHELL_OPERATORS:
            break
          if arg.startswith("-") or "=" in arg:
            continue
          found.append((snippet, arg))
  return found


def test_every_make_target_in_the_docs_exists():
  targets = makefile_targets()
  shown = make_invocations()
  assert {"quickstart", "test"} <= {t for _, t in shown}
  missing = [f"{s.where()}: make {t}" for s, t in shown if t not in targets]
  assert not missing, f"not targets of the Makefile ({sorted(targets)}):\n" + "\n".join(missing)


def test_a_missing_make_target_is_caught(tmp_path):
  doc = tmp_path / "bad.md"
  doc.write_text("Run `make quickstart`, then `REPARAM_DATA_DIR=/d make -j2 tset`.\n",
                 encoding="utf-8")
  assert [t for _, t in make_invocations([str(doc)])] == ["quickstart", "tset"]
  assert "tset" not in makefile_targets()


# ---------------------------------------------------------------------------
# The README's layout table


def layout_paths(readme: str) -> list[str]:
  """The `reparam_jax/...` paths of the README's "## Layout" table, braces expanded."""
  section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
  paths = []
  for row in section.split("\n"):
    if not row.startswith("| `"):
      continue
    cell = row.split(" | ", 1)[0]
    names = re.findall(r"`([^`]+)`", cell)
    prefix = ""
    for name in names:
      if name.startswith("reparam_jax/"):
        prefix = "reparam_jax/"
      elif prefix:
        name = prefix + name
      braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", name)
      if braces:
        paths += [braces.group(1) + part + braces.group(3) for part in braces.group(2).split(",")]
      else:
        paths.append(name)
  return paths


def _readme() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return f.read()


def test_the_readme_layout_lists_every_folder_of_the_package():
  listed = {p.rstrip("/") for p in layout_paths(_readme())}
  folders = sorted(os.path.relpath(p, REPO).rstrip("/")
                   for p in glob.glob(os.path.join(REPO, "reparam_jax", "*", ""))
                   if not p.rstrip("/").endswith("__pycache__"))
  missing = [f for f in folders if f not in listed]
  assert not missing, f"folders of reparam_jax/ missing from README.md's layout table: {missing}"
  absent = [p for p in listed if p.startswith("reparam_jax/") and not os.path.exists(
      os.path.join(REPO, p))]
  assert not absent, f"README.md's layout table lists paths that do not exist: {absent}"


def test_the_readme_layout_lists_every_top_level_command():
  listed = {p for p in layout_paths(_readme()) if re.fullmatch(r"reparam_jax/\w+\.py", p)}
  commands_here = set()
  for path in glob.glob(os.path.join(REPO, "reparam_jax", "*.py")):
    with open(path, encoding="utf-8") as f:
      if 'if __name__ == "__main__":' in f.read():
        commands_here.add(os.path.relpath(path, REPO))
  assert listed == commands_here


def test_a_folder_missing_from_the_layout_is_caught():
  readme = _readme().replace("| `reparam_jax/rundir/` |", "| `reparam_jax/elsewhere/` |")
  assert "reparam_jax/rundir" not in {p.rstrip("/") for p in layout_paths(readme)}
  readme = _readme().replace("`reparam_jax/tasks/`, `objectives/`, `data/`",
                             "`reparam_jax/tasks/`, `data/`")
  listed = {p.rstrip("/") for p in layout_paths(readme)}
  assert "reparam_jax/objectives" not in listed and "reparam_jax/data" in listed
