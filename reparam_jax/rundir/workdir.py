"""The run folder: the one place that knows its file names and reads a finished run back.

  WORKDIR/config.json          the resolved config of the run
  WORKDIR/metrics.jsonl        one JSON record per log/eval step (rundir/metrics.py writes it)
  WORKDIR/tensorboard/         TensorBoard event files
  WORKDIR/checkpoints/<step>/  train state + data iterator (rundir/checkpoint.py)
  WORKDIR/params/              a params-only checkpoint (imported, converted, compressed)
  WORKDIR/masks/               sparsity masks of a compressed run
  WORKDIR/best/<step>/         early stopping's best params
  WORKDIR/reparam_report.txt   the reparameterization's size/FLOPs table
  WORKDIR/log.txt, point.json  console output and overrides of a sweep point
  WORKDIR/done.json            written last: the final metrics of a finished run

Sweeps, ablation tables, plots, the sampler and the offline tools all read
runs through here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from reparam_jax.errors import UserError
from reparam_jax.pytree import layers
from reparam_jax.rundir import checkpoint
from reparam_jax.rundir.files import atomic_write

CONFIG = "config.json"
METRICS = "metrics.jsonl"
DONE = "done.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
PARAMS = "params"
MASKS = "masks"
BEST = "best"
REPARAM_REPORT = "reparam_report.txt"
LOG = "log.txt"  # the run's console output, when a launcher or sweep captured it
POINT = "point.json"  # a sweep point's overrides and command
# Per-example outcomes of the final evaluation (classification: `correct`, `loss`, in the
# evaluation split's order): what a paired bootstrap between two runs resamples.
EVAL_EXAMPLES = "eval_examples.npz"

PyTree = Any


def path(workdir: str | os.PathLike, name: str) -> str:
  return os.path.join(os.fspath(workdir), name)


def prepare(workdir: str, process_index: int = 0) -> None:
  """Creates `workdir` and checks that it is writable (a `UserError` if not)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{process_index}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir!r} is not writable ({e.strerror}); pass a writable "
                    "--workdir") from None


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  atomic_write(path(workdir, CONFIG), config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run (or a `compress` output) wrote into its folder."""
  where = path(workdir, CONFIG)
  if not os.path.exists(where):
    raise UserError(f"{workdir} has no {CONFIG}; is it a training workdir or compress output?")
  with open(where, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Records of `metrics.jsonl` in file order ([] when absent).

  A torn last line (a run killed mid-write) is skipped rather than fatal:
  interrupted runs are normal here and are resumed later.
  """
  where = path(workdir, METRICS)
  if not os.path.exists(where):
    return []
  records = []
  with open(where, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops records past `step`: a resumed run redoes them (a crash may have logged past
  its last checkpoint)."""
  if not os.path.exists(path(workdir, METRICS)):
    return
  records = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
  atomic_write(path(workdir, METRICS),
                                "".join(json.dumps(r) + "\n" for r in records))


def write_done(workdir: str, final: dict[str, Any]) -> None:
  atomic_write(path(workdir, DONE), json.dumps(final, indent=2))


def read_done(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The final metrics of a finished run, or None while it is unfinished."""
  where = path(workdir, DONE)
  if not os.path.exists(where):
    return None
  try:
    with open(where, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{where} is not valid JSON ({e})") from e
  return data if isinstance(data, dict) else None


def write_eval_examples(workdir: str, arrays: dict[str, Any]) -> None:
  """`eval_examples.npz`, written whole or not at all (a reader never sees half a file)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write(path(workdir, EVAL_EXAMPLES), buf.getvalue())


def read_eval_examples(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The final evaluation's per-example arrays, or None for a run that wrote none."""
  where = path(workdir, EVAL_EXAMPLES)
  if not os.path.exists(where):
    return None
  with np.load(where) as data:
    return {k: data[k] for k in data.files}


def is_done(workdir: str | os.PathLike) -> bool:
  return os.path.exists(path(workdir, DONE))


@dataclasses.dataclass
class Run:
  """A finished (or checkpointed) run read back: what offline tools start from."""

  config: ml_collections.ConfigDict
  params: PyTree
  masks: PyTree | None
  workdir: str


def load_run(workdir: str) -> Run:
  """A training workdir (latest checkpoint) or a `compress` output directory.

  A scanned run (`model.scan_layers`) is returned unrolled: its `blocks`
  stack split into `block_{i}` and its config saying so, because the tools
  that read runs (generation, compression, reports, export) address layers by
  their unrolled paths and work on one host.
  """
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  params, masks = checkpoint.load_params(workdir), load_masks(workdir)
  if layers.has_stack(params):
    params, masks = layers.unstack_layers(params), layers.unstack_layers(masks)
    config = unrolled_config(config)
  return Run(config, params, masks, workdir)


def unrolled_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A run's config with its layers unrolled (the layout of `load_run`'s params)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if "model" in config and "scan_layers" in config.model:
    config.model.scan_layers = False
  return config


def load_masks(workdir: str) -> PyTree | None:
  """The sparsity masks (`'masks'` collection) of a run's latest checkpoint, or of a
  `compress` output's `masks/`; None for a run without them (or a bare params folder).

  Every tool that materializes a run's weights applies these, as training did.
  """
  workdir = os.path.abspath(workdir)
  masks = (_latest_extra(workdir) or {}).get(checkpoint.AUX_COLLECTION)
  if masks is None and os.path.isdir(path(workdir, MASKS)):
    masks = checkpoint.load_params(path(workdir, MASKS))
  return masks


def _latest_extra(workdir: str) -> PyTree | None:
  """The non-param collections of the newest train-state checkpoint, if any."""
  ckpt_dir = epath.Path(workdir) / CHECKPOINTS
  if not ckpt_dir.exists():
    return None
  for step in sorted((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()),
                     reverse=True):
    state_dir = ckpt_dir / str(step) / "state"
    if not state_dir.exists():
      continue
    if not checkpoint.array_metadata(state_dir).get("extra"):
      return None
    return checkpoint.restore_spread(state_dir)["extra"]
  return None
