"""Orbax checkpoints: the train state and the data iterator, saved together.

Layout of a workdir:

  checkpoints/<step>/state   train state (sharded arrays; restored onto any mesh)
  checkpoints/<step>/data    grain iterator state, one file per process
  params/                    a params-only checkpoint (`save_params`), e.g.
                             an imported pretrained model or a converted one

Saves are asynchronous (training continues while the previous checkpoint
is written) and atomic (orbax writes to a temporary directory and renames),
so a crash mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from reparam_jax.errors import UserError


class Checkpointer:
  """Periodic saves of `{state, data}` with keep-N, and resume."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> bool:
    if step in self._manager.all_steps():
      return False  # already saved (e.g. a periodic save right before preemption)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointSave(data_iter)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
    """Restores the state onto the shardings in `abstract_state`; sets `data_iter`."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.PyGrainCheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
    step = ocp.CheckpointManager(path / "checkpoints", item_names=("state", "data")).latest_step()
    if step is None:
      raise UserError(f"{path} has no checkpoints to start from")
    params = _restore_on_one_device(path / "checkpoints" / str(step) / "state")["params"]
  else:
    if (path / "params").is_dir():
      path = path / "params"
    if not path.exists():
      raise UserError(f"no params checkpoint at {path} (expected a directory written by "
                      "convert/convert_hf, or a training workdir)")
    params = _restore_on_one_device(path)
  if abstract_params is None:
    return params
  return _onto(params, abstract_params, str(path))


def _restore_on_one_device(path: epath.Path) -> Any:
  """Restores any checkpoint, whatever mesh wrote it, onto this host's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path)
    tree = getattr(metadata, "tree", metadata)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
                          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    return ckptr.restore(path, target)


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
  return jax.tree.map(lambda a, w: jax.device_put(jax.numpy.asarray(a, w.dtype), w.sharding),
                      _select(params, abstract), abstract)


def _flatten(tree: Any) -> list[tuple[str, Any]]:
  return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _select(params: Any, abstract: Any) -> Any:
  """The subtree of `params` with the structure of `abstract`."""
  if isinstance(abstract, dict):
    return {k: _select(params[k], v) for k, v in abstract.items()}
  return params
