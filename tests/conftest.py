"""Test setup: 8 simulated CPU devices (set before JAX initialises), one compilation
cache for the whole run, and data paths."""

import os
import shutil
import tempfile

# The suite compiles thousands of tiny programs and runs each a few times, so
# XLA's LLVM optimisation passes cost far more compile time than they save at
# run time (a quarter of the wall time of the compile-bound tests).  Tests check
# what programs compute, not how fast; every process a test starts inherits
# the setting.  Training and the benchmarks keep XLA's defaults.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Most of the suite's time is XLA compiling the same tiny programs again: every
# subprocess trainer compiles the train step of the same tiny config, and tests
# that rebuild a model re-jit identical functions.  JAX's persistent cache,
# shared through the environment by this process and every process it starts,
# compiles each program once per run.  A fresh folder per run (the suite's
# figures are from a cold cache); set JAX_COMPILATION_CACHE_DIR to keep one.
# pytest-xdist's workers inherit the folder their controller made.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="reparam-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project_modules() -> list[str]:
  names = []
  for package in ("reparam_jax", "bench"):
    for root, _, files in os.walk(os.path.join(REPO, package)):
      if "__pycache__" in root:
        continue
      dotted = os.path.relpath(root, REPO).replace(os.sep, ".")
      names += [dotted] + [f"{dotted}.{f[:-3]}" for f in files
                           if f.endswith(".py") and f != "__init__.py"]
  return names + ["__main__"]  # `python -m reparam_jax.train` runs as __main__


# pyproject's filterwarnings turns a DeprecationWarning raised from the
# project's code into an error in this process; the trainers, sweeps and
# converters the tests start as subprocesses get the same through
# PYTHONWARNINGS (which matches whole module names, hence the list).
os.environ["PYTHONWARNINGS"] = ",".join(
    f"error::DeprecationWarning:{m}" for m in _project_modules())

SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def raw_data_dir() -> str:
  """The raw downloads folder ($REPARAM_DATA_DIR, else ../shared/data)."""
  path = os.environ.get("REPARAM_DATA_DIR") or SHARED_DATA
  if not os.path.isdir(path):
    pytest.skip(f"raw datasets not found at {path}; set REPARAM_DATA_DIR")
  return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """One prepared-TFDS folder shared by the whole session (preparing is slow)."""
  return os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


# The reference implementations the `peer` tests compare with.  They are
# installed only in the Python 3.11 environment, where `make test` runs just
# these tests (the rest runs on the current stack).
PEER_LIBRARIES = ("torch", "transformers", "peft")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
  """Marks `peer` every test of a module that imported a peer library.

  A module that needs one imports it at module level (`pytest.importorskip`),
  so where the library is missing the whole module skips; a test that imports
  one inside its body carries `@pytest.mark.peer` itself.
  """
  for item in items:
    module = getattr(item, "module", None)
    if module is not None and any(name in vars(module) for name in PEER_LIBRARIES):
      item.add_marker(pytest.mark.peer)


@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)  # after `-m`
def pytest_heavy_modules_first(config, items):
  """Puts the modules holding `heavy` tests first, most heavy tests first, order kept within
  a module.

  pytest-xdist hands each worker whole modules (`--dist loadfile`) in this order
  (`--no-loadscope-reorder`); its default order, most tests first, left the
  one-test end-to-end modules for last, where one worker ran them alone.
  """
  del config
  def module(item) -> str:
    return item.nodeid.split("::")[0]

  heavy: dict[str, int] = {}
  for item in items:
    heavy[module(item)] = heavy.get(module(item), 0) + (item.get_closest_marker("heavy") is not None)
  position = {path: i for i, path in enumerate(heavy)}
  items.sort(key=lambda item: (-heavy[module(item)], position[module(item)]))


_EXIT_STATUS = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
  _EXIT_STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  """Exits without joining leftover threads once the summary is printed.

  Tests that inject checkpoint-save failures leave orbax's non-daemon
  signalling threads waiting for a commit that never comes; a normal
  interpreter shutdown would join them forever and CI would hang after a
  green summary.  Everything has been reported by now, so skip the joins.
  """
  import sys
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(_EXIT_STATUS["code"])
