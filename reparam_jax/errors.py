"""User errors: bad configs, data or paths. Reported as one line, exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable


class UserError(Exception):
  """A mistake the user can fix; the message says what is wrong and how to fix it."""

  exit_code = 2


class TrainingDiverged(UserError):
  """A non-finite loss or gradient stopped the run; the last good checkpoint is kept."""

  exit_code = 3


class CheckpointError(UserError):
  """A checkpoint could not be written even after retries (disk full, permissions)."""

  exit_code = 4


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps a CLI entry point: a `UserError` prints one line and exits 2, no traceback.

  Subclasses exit with their own code (3: diverged, 4: checkpoint failed) so
  launchers can tell a bad config from a run that went wrong.
  """

  @functools.wraps(main)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(getattr(e, "exit_code", 2))

  return wrapper
