"""Config files and command-line overrides.

A config is a Python file with `get_config(arg: str | None) -> ConfigDict`
(the ml_collections convention of big_vision and the Flax examples).  On the
command line:

  --config=configs/lm/shakespeare_char.py[:arg]  --config.optimizer.lr=3e-4

The loaded config is locked: an override of a key that does not exist is an
error naming the closest existing keys, and values are converted to the type
of the field they replace (an `int` field rejects `"abc"`).  Every problem is
a `UserError` (one line, exit code 2), raised before any compute.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import os
import sys
from typing import Any, Iterable, Sequence

import ml_collections

from reparam_jax.errors import UserError

ConfigDict = ml_collections.ConfigDict


def import_file(path: str, what: str = "config") -> Any:
  """Imports a Python file by path (a config or experiment file)."""
  if not os.path.isfile(path):
    raise UserError(f"{what} file {path} does not exist")
  _add_configs_root_to_path(path)
  module_name = "_reparam_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_name] = module
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ConfigDict:
  """Loads `path.py[:arg]` and returns its (locked) config."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config file {path!r} does not exist (expected --config=path/to/file.py[:arg])")
  module = import_file(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} has no get_config() function")
  config = module.get_config(arg or None) if _takes_arg(module.get_config) else module.get_config()
  if not isinstance(config, ConfigDict):
    raise UserError(f"get_config() in {path!r} must return an ml_collections.ConfigDict")
  config.lock()
  return config


def _add_configs_root_to_path(path: str) -> None:
  """Lets config files import each other (`from configs.lm import shakespeare_char`).

  The parent of the enclosing `configs/` package goes on `sys.path`, so this
  works from any working directory.
  """
  directory = os.path.dirname(os.path.abspath(path))
  while os.path.exists(os.path.join(directory, "__init__.py")):
    if os.path.basename(directory) == "configs":
      root = os.path.dirname(directory)
      if root not in sys.path:
        sys.path.insert(0, root)
      return
    directory = os.path.dirname(directory)


def _takes_arg(fn: Any) -> bool:
  return fn.__code__.co_argcount > 0


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ConfigDict):
      keys.extend(flat_keys(v, prefix + k + "."))
  return keys


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Converts the override text to the type of the value it replaces."""
  def fail(expected: str) -> UserError:
    return UserError(f"--config.{key}={text}: expected {expected}, got {text!r}")

  if text.strip() == "None" and not isinstance(current, ConfigDict):
    return None  # unset (e.g. a model field that a pretrained init_from then fills)

  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise fail("a boolean (true/false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      try:
        as_float = float(text)
      except ValueError:
        raise fail("an integer") from None
      if as_float.is_integer():
        return int(as_float)
      raise fail("an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise fail("a number") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = tuple(s.strip() for s in text.split(",") if s.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  if isinstance(current, ConfigDict):
    raise UserError(f"--config.{key} is a section; override one of its fields, "
                    f"e.g. --config.{key}.{next(iter(current.keys()), 'field')}=...")
  # None or another type: a Python literal if it parses, else the raw string.
  if text.strip().lower() == "none":
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ConfigDict, overrides: Iterable[tuple[str, str]]) -> ConfigDict:
  """Applies `(dotted.key, text)` overrides in order to a locked config."""
  all_keys = flat_keys(config)
  for key, text in overrides:
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        close = difflib.get_close_matches(key, all_keys, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown config key {key!r}{hint}")
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    value = _parse_value(key, text, current)
    try:
      with node.ignore_type():
        node[parts[-1]] = value
    except (TypeError, ValueError) as e:
      raise UserError(f"--config.{key}={text}: {e}") from None
  return config


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Separates `--config=…` and `--config.k=v` from the other arguments."""
  spec, overrides, rest = None, [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config=") or arg == "--config":
      if arg == "--config":
        i += 1
        if i >= len(args):
          raise UserError("--config needs a value: --config=path/to/file.py")
        spec = args[i]
      else:
        spec = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        i += 1
        if i >= len(args):
          raise UserError(f"--config.{key} needs a value: --config.{key}=VALUE")
        value = args[i]
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return spec, overrides, rest


def load(argv: Sequence[str]) -> tuple[ConfigDict, list[str]]:
  """Config from `--config=…` plus overrides; returns it and the other args."""
  spec, overrides, rest = split_argv(argv)
  if spec is None:
    raise UserError("missing --config=path/to/config.py[:arg]")
  config = apply_overrides(load_config_file(spec), overrides)
  return config, rest
