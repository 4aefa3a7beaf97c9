"""The client side of the PyTorch peers: a peer script in a second interpreter.

The peers (bench/*torch_peer.py) run where torch is installed; the JAX side
talks to them over stdin/stdout, one JSON message per line.  This module
imports nothing of the project, so a bench that only needs a peer (the
generation bench) starts without the training stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = os.path.join(REPO, ".venv-py311", "bin", "python")


class TorchPeer:
  """A peer script (bench/*_peer.py) in a child process, one JSON line each way."""

  def __init__(self, python: str, script: str):
    self.proc = subprocess.Popen([python, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)

  def call(self, **msg: Any) -> dict[str, Any]:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the torch peer exited (code {self.proc.wait()})")
    return json.loads(line)

  def close(self) -> None:
    if self.proc.poll() is None:  # still running (not crashed)
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.close()
    self.proc.wait(timeout=30)


def torch_python(flag: str | None) -> str | None:
  """The interpreter to run the peer in, or None if there is none."""
  path = flag or os.environ.get("REPARAM_TORCH_PYTHON") or DEFAULT_TORCH_PYTHON
  return path if os.path.exists(path) else shutil.which(path)  # a path, or a name on PATH


def require_torch_python(parser: Any, flag: str | None) -> str:
  """`torch_python(flag)`, or the command's usage error (exit 2) saying how to get one."""
  python = torch_python(flag)
  if python is None:
    parser.error("no interpreter with torch; run `make test-peers` once (it builds .venv-py311) "
                 "or pass --torch_python")
  return python
