"""User errors: bad configs, data or paths. Reported as one line, exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable


class UserError(Exception):
  """A mistake the user can fix; the message says what is wrong and how to fix it."""


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps a CLI entry point: a `UserError` prints one line and exits 2, no traceback."""

  @functools.wraps(main)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapper
