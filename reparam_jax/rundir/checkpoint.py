"""Orbax checkpoints: the train state and the data iterator, saved together.

Layout of a workdir:

  checkpoints/<step>/state   train state (sharded arrays; restored onto any mesh)
  checkpoints/<step>/data    grain iterator state, one file per process, with
                             what the trainer carries across a resume (the
                             metrics of the steps since its last log; `DataSnapshot`)
  params/                    a params-only checkpoint (`save_params`), e.g.
                             an imported pretrained model or a converted one

Saves are asynchronous (training continues while the previous checkpoint
is written) and atomic (orbax writes to a temporary directory and renames),
so a crash mid-save leaves the previous checkpoints intact.  A checkpoint
that is corrupt anyway (truncated by a failing disk, copied half-way) is
moved aside to `checkpoints/corrupt-<step>` at restore and an older one
used; see docs/reliability.md.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from reparam_jax.errors import CheckpointError, UserError
from reparam_jax.rundir import sharded

# Orbax splits the write of a replicated array among its replicas by slicing
# it on device, and each distinct slice is an XLA program compiled on first
# use: on an 8-device host mesh that costs several seconds of compiles per
# process for a checkpoint of tiny arrays.  Splitting pays only for large
# writes, so arrays whose per-replica slice is under 1 MiB are written whole
# by one replica (orbax's own rule for them, with a threshold).  Otherwise the
# handler is orbax's default one.  Orbax's public `register_type_handler` logs
# a warning to stderr on every override, which would be the first line of
# every command's output, hence the registry itself (pinned orbax version).
_REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20
type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
    jax.Array, ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=_REPLICA_PARALLEL_MIN_SLICE_BYTES,
        array_metadata_store=array_metadata_store.Store()), override=True, ignore_warnings=True)


class Checkpointer:
  """Periodic saves of `{state, data}` with keep-N, and resume."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
               save_retries: int = 3, retry_wait_s: float = 2.0):
    self.directory = epath.Path(directory).absolute()
    self.save_retries = save_retries
    self.retry_wait_s = retry_wait_s
    self._failures = 0  # consecutive failed save attempts
    self._last: tuple[int, dict[str, Any], bool] | None = None
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True,
        # `<step>.orbax-checkpoint-tmp-*` dirs are saves a crash interrupted;
        # they were never complete, so nothing is lost by removing them.
        cleanup_tmp_directories=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "data"))
    except OSError as e:
      raise UserError(f"cannot use checkpoint directory {self.directory} ({e}); pass a "
                      "writable --workdir") from None

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> bool:
    """Saves (asynchronously).  A failed save is reported and retried; `CheckpointError`
    once `save_retries` attempts in a row have failed, so training never goes on
    silently without checkpoints."""
    self._check_previous_save()
    if step in self._manager.all_steps():
      return False  # already saved (e.g. a periodic save right before preemption)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointSave(data_iter)
    self._last = (step, items, force)
    return self._save_with_retries(step, items, force)

  def _save_with_retries(self, step: int, items: dict[str, Any], force: bool) -> bool:
    while True:
      try:
        self._ensure_directory()
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
      except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types for I/O)
        self._failed(step, e)

  def _ensure_directory(self) -> None:
    """Raises (a failed attempt) if the checkpoint directory cannot be (re)created.

    Orbax creates a save's temporary directory in a background thread, and
    when that fails (the directory was deleted, or a file is in its place)
    the save waits for the creation signal for its full barrier timeout,
    10 minutes per attempt, instead of failing.
    """
    if not self.directory.is_dir():
      self.directory.mkdir(parents=True, exist_ok=True)

  def _failed(self, step: int, error: BaseException) -> None:
    """Counts a failed save: warns and backs off, or gives up with `CheckpointError`."""
    self._failures += 1
    if self._failures > self.save_retries:
      raise CheckpointError(
          f"could not save the checkpoint of step {step} to {self.directory}: "
          f"{self._failures} attempts in a row failed (last: {_short(error)}); the last "
          f"complete checkpoint is step {self.latest_step()}. Free disk space or fix "
          "permissions, then rerun the same command to resume") from None
    _warn(f"saving the checkpoint of step {step} failed ({_short(error)}); retrying in "
          f"{self.retry_wait_s * self._failures:g}s ({self._failures}/{self.save_retries})")
    time.sleep(self.retry_wait_s * self._failures)

  def _check_previous_save(self) -> None:
    """An asynchronous save fails in the background; its error surfaces here.

    The failed step cannot be saved again (its state is gone), so the save
    that comes next counts as its retry.
    """
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      self._failed(self._last[0] if self._last else -1, e)
    else:
      if self._last is not None and self._last[0] in self._manager.all_steps():
        self._failures = 0

  def restore_latest_good(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any]:
    """(step, state) of the newest checkpoint that restores; (0, None) if there is none.

    A checkpoint that fails to restore (truncated files, missing metadata) is
    reported and moved aside to `corrupt-<step>` (never deleted: it may hold
    the only copy of some work), and the next older one is tried.  In a
    multi-process run all processes agree on every verdict.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      problem = _missing_files(self.directory / str(step), data=data_iter is not None)
      state = None
      if not problem:
        # A readable checkpoint of another model is the user's mistake, not
        # corruption: setting it aside would silently restart from step 0.
        problem, mismatch = _structure_check(self.directory / str(step) / "state",
                                             abstract_state)
        if mismatch:  # same files and config everywhere: every process raises
          raise UserError(f"checkpoint {self.directory / str(step)} holds a different model or "
                          f"optimizer than this config ({mismatch}); use a fresh --workdir or "
                          "the config it was trained with")
      if not problem:
        try:
          state = self.restore(step, abstract_state, data_iter)
        except Exception as e:  # noqa: BLE001 (orbax/tensorstore/json errors alike)
          problem = _short(e)
      if _all_processes_ok(not problem):
        return step, state
      self._quarantine(step, problem or "unreadable on another process")
    return 0, None

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
    """Restores the state onto the shardings in `abstract_state`; sets `data_iter`."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self, retry_last: bool = True) -> None:
    """Waits for the in-flight save.  If it failed, saves its state again
    (still valid: no step ran since) until it succeeds or retries run out."""
    try:
      while True:
        try:
          self._manager.wait_until_finished()
          self._manager.check_for_errors()
          break
        except Exception as e:  # noqa: BLE001
          if not (retry_last and self._last):
            raise CheckpointError(f"the last checkpoint save to {self.directory} failed "
                                  f"({_short(e)})") from None
          self._failed(self._last[0], e)
          self._save_with_retries(*self._last)
    finally:
      self._manager.close()

  def _quarantine(self, step: int, problem: str) -> None:
    src = self.directory / str(step)
    dst = self.directory / f"corrupt-{step}"
    if jax.process_index() == 0:
      n = 1
      while dst.exists():  # corrupt again at the same step: keep both
        n += 1
        dst = self.directory / f"corrupt-{step}.{n}"
      src.rename(dst)
    sync("reparam_jax:quarantine")
    _warn(f"checkpoint {src} is corrupt or incomplete ({problem}); moved it to "
          f"{dst.name} and trying an older one")
    self._manager.reload()


# The `data` item of a checkpoint saved with `DataSnapshot`: {"format": DATA_FORMAT,
# "iterator": the iterator's state, "extra": the trainer's JSON}.  A bare iterator state
# (a checkpoint written without `extra`) restores too.
DATA_FORMAT = "reparam_jax.data/1"


class DataSnapshot:
  """A checkpoint's `data` item: the iterator's position now (an asynchronous save must
  not see later batches) and `extra`, JSON the trainer restores with it (the logging
  window: the per-step metrics since the last log, so a resumed run logs the same means)."""

  def __init__(self, iterator: Any, extra: dict[str, Any] | None = None):
    state = iterator.get_state()  # a DatasetIterator's is a dict, a DataLoader's JSON bytes
    state = json.loads(state) if isinstance(state, bytes) else state
    self._state = json.dumps({"format": DATA_FORMAT, "iterator": state,
                              "extra": extra or {}}).encode()

  def get_state(self) -> bytes:
    return self._state


class DataRestore:
  """What `Checkpointer.restore` restores a `DataSnapshot` into: sets `iterator`'s
  position and keeps the snapshot's `extra` ({} for a checkpoint without one)."""

  def __init__(self, iterator: Any):
    self.iterator = iterator
    self.extra: dict[str, Any] = {}

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    self.extra = {}
    if isinstance(saved, dict) and saved.get("format") == DATA_FORMAT:
      saved, self.extra = saved["iterator"], saved["extra"]
    # grain hands a DatasetIterator its state parsed, other iterators theirs as bytes
    self.iterator.set_state(saved if isinstance(self.iterator, grain.DatasetIterator)
                            else json.dumps(saved).encode())

  def start_prefetch(self) -> None:
    if hasattr(self.iterator, "start_prefetch"):
      self.iterator.start_prefetch()


# Files every complete checkpoint of `Checkpointer` has (orbax layout, one
# process or many): checked first so the warning names what is missing.
_REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt")

# The non-param collection that holds the reparameterizations' per-weight state
# (sparsity masks, reparam/state.py) in a train state and its checkpoints.
AUX_COLLECTION = "masks"


def _missing_files(step_dir: epath.Path, data: bool = True) -> str:
  missing = [name for name in _REQUIRED if not (step_dir / name).exists()]
  if missing:
    return f"missing {', '.join(missing)}"
  if data and not (step_dir / "data").exists():
    return "missing data/ (the data-iterator state)"
  return ""


def _structure_check(state_dir: epath.Path, abstract_state: Any) -> tuple[str, str]:
  """(problem reading the metadata, mismatch of the leaves' shapes/dtypes with the target)."""
  try:
    tree = array_metadata(state_dir)
  except Exception as e:  # noqa: BLE001
    return _short(e), ""
  have = sorted((tuple(m.shape), str(m.dtype))
                for m in jax.tree.leaves(tree, is_leaf=sharded.is_array))
  want = sorted((tuple(a.shape), str(a.dtype))
                for a in jax.tree.leaves(abstract_state, is_leaf=sharded.is_array))
  if have == want:
    return "", ""
  extra = [x for x in have if x not in want][:2]
  missing = [x for x in want if x not in have][:2]
  return "", (f"{len(have)} arrays saved vs {len(want)} expected; e.g. saved {extra or 'none'} "
              f"but expected {missing or 'none'}")


def array_metadata(path: epath.Path) -> Any:
  """The tree of per-array metadata (shape, dtype) of a `StandardSave` item directory.

  Read through the item's handler: `StandardCheckpointer.metadata` would also
  look for step metadata, which an item inside a step (`<step>/state`) lacks,
  and log a warning for each read.
  """
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.metadata(epath.Path(path).absolute()).tree
  finally:
    handler.close()


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def sync(name: str) -> None:
  """Waits for every process (a no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def save_params(path: str, params: Any) -> None:
  """Writes a params-only checkpoint (e.g. an imported or converted model)."""
  path = epath.Path(path).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)


def load_params(path: str, abstract_params: Any | None = None) -> Any:
  """Reads a params checkpoint; with `abstract_params`, onto their shardings.

  `path` is a params directory written by `save_params`, or a training
  workdir (then the params of its latest train-state checkpoint).
  """
  path = epath.Path(path).absolute()
  if (path / "checkpoints").exists():
    params = _latest_good_params(path / "checkpoints")
  else:
    if (path / "params").is_dir():
      path = path / "params"
    if not path.exists():
      raise UserError(f"no params checkpoint at {path} (expected a directory written by "
                      "convert/convert_hf, or a training workdir)")
    params = restore_spread(path)
  if abstract_params is None:
    return params
  return _onto(params, abstract_params, str(path))


def _latest_good_params(directory: epath.Path) -> Any:
  """Params of the newest readable train-state checkpoint (read-only: nothing is moved)."""
  steps = ocp.CheckpointManager(directory, item_names=("state", "data")).all_steps()
  if not steps:
    raise UserError(f"{directory.parent} has no checkpoints to start from")
  for step in sorted(steps, reverse=True):
    problem = _missing_files(directory / str(step), data=False)
    if not problem:
      try:
        return restore_spread(directory / str(step) / "state")["params"]
      except Exception as e:  # noqa: BLE001
        problem = _short(e)
    _warn(f"skipping checkpoint {directory / str(step)}: corrupt or incomplete ({problem})")
  raise UserError(f"no readable checkpoint in {directory} (all of steps {sorted(steps)} are "
                  "corrupt or incomplete)")


def restore_spread(path: epath.Path) -> Any:
  """Restores any checkpoint, whatever mesh wrote it, split over every device of every
  process (`sharded.storage_sharding`): each process reads only its shards, and no
  host or device holds the whole tree."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, sharded.abstract_spread(array_metadata(path)))


def _onto(params: Any, abstract: Any, where: str) -> Any:
  """Places `params` onto the shardings of `abstract`, checking the tree matches."""
  flat_got = dict(_flatten(params))
  flat_want = dict(_flatten(abstract))
  missing = sorted(set(flat_want) - set(flat_got))
  if missing:
    raise UserError(f"{where}: parameter {missing[0]} is missing from the checkpoint "
                    f"({len(missing)} missing in all)")
  for name, want in flat_want.items():
    if tuple(flat_got[name].shape) != tuple(want.shape):
      raise UserError(f"{where}: parameter {name} has shape {tuple(flat_got[name].shape)} in the "
                      f"checkpoint but the model expects {tuple(want.shape)}")
  return jax.tree.map(lambda a, w: sharded.reshard(a, w.sharding, w.dtype),
                      _select(params, abstract), abstract)


def _flatten(tree: Any) -> list[tuple[str, Any]]:
  return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _select(params: Any, abstract: Any) -> Any:
  """The subtree of `params` with the structure of `abstract`."""
  if isinstance(abstract, dict):
    return {k: _select(params[k], v) for k, v in abstract.items()}
  return params


def load_matching_params(path: str, abstract_params: Any, fresh_params: Any,
                         loaded_params: Any | None = None) -> tuple[Any, str]:
  """`fresh_params` with every parameter the checkpoint at `path` also has loaded from it.

  For fine-tuning: a pre-training checkpoint supplies the backbone, the new
  head keeps its fresh initialisation, and checkpoint entries the model
  lacks (the pre-training heads) are ignored.  A shared parameter whose
  shape differs, or no shared parameter at all, is a `UserError`.  Returns
  the params (on the shardings of `abstract_params`) and a one-line summary
  by top-level key.  `loaded_params`: the checkpoint's tree if the caller
  already read it (e.g. imported from a Hugging Face folder).
  """
  got = dict(_flatten(load_params(path) if loaded_params is None else loaded_params))
  want = _flatten(abstract_params)
  loaded = set()
  for name, w in want:
    if name in got:
      if tuple(got[name].shape) != tuple(w.shape):
        raise UserError(f"{path}: parameter {name} has shape {tuple(got[name].shape)} in the "
                        f"checkpoint but the model expects {tuple(w.shape)}")
      loaded.add(name)
  if not loaded:
    raise UserError(f"init_from={path}: the checkpoint shares no parameter with the model "
                    f"(checkpoint keys start with {sorted({n.split('/')[0] for n in got})[:5]})")
  leaves = [sharded.reshard(got[name], w.sharding, w.dtype) if name in loaded else fresh
            for (name, w), fresh in zip(want, jax.tree.leaves(fresh_params))]
  params = jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)

  def top(names: Any) -> set[str]:
    return {n.split("/")[0] for n in names}
  model_top = top(n for n, _ in want)
  fresh_top = top(n for n, _ in want if n not in loaded)
  full = sorted(top(loaded) - fresh_top)
  partial = sorted(top(loaded) & fresh_top)
  summary = (f"init_from {path}: from the checkpoint: {', '.join(full) or '-'}"
             + (f"; partly: {', '.join(partial)}" if partial else "")
             + f"; freshly initialised: {', '.join(sorted(fresh_top - top(loaded))) or '-'}"
             + "; in the checkpoint but not the model: "
             + f"{', '.join(sorted(top(got) - model_top)) or '-'}")
  return params, summary
