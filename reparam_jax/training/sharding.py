"""Device mesh and the logical-axis → mesh-axis rules (the table is `config/base.py`'s).

Model code names every parameter and activation dimension logically
(`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`); a config's
`axis_rules` maps those names onto the mesh axes `data`, `fsdp` and `tensor`
(MaxText's scheme).  Changing parallelism is a config change, never a model
change.  A mesh axis is used at most once per array: Flax assigns it to the
first logical dimension that asks for it, so activations (`batch` takes
`fsdp`) and parameters (`embed` takes `fsdp`) share one table.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from reparam_jax.config.base import DEFAULT_AXIS_RULES, MESH_AXES  # noqa: F401 (re-exported)
from reparam_jax.errors import UserError


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves `-1` entries and checks the product against the device count."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise UserError("at most one mesh axis may be -1 (inferred)")
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} "
                      "devices; set --config.mesh.* so their product divides the device count")
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but "
                    f"{num_devices} are available; make the product of --config.mesh.* "
                    f"equal {num_devices} or use -1 for one axis")
  return tuple(sizes)


# Every mesh axis is `Auto`: the model states shardings as logical-axis
# constraints and the compiler propagates them (MaxText's scheme).  `Explicit`
# axes (jax.make_mesh's default since 0.7) would put shardings in the types and
# demand an `out_sharding` at every ambiguous gather, e.g. the embedding lookup.
MESH_AXIS_TYPES = (AxisType.Auto,) * len(MESH_AXES)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    return jax.make_mesh(shape, MESH_AXES, MESH_AXIS_TYPES, devices=devices)
  except (ValueError, NotImplementedError):
    # make_mesh optimises for ICI topology and refuses some shapes on CPU.
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=MESH_AXIS_TYPES)


def rules_tuple(rules: Any) -> tuple[tuple[str, Any], ...]:
  out = []
  for logical, mesh_axes in rules:
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    out.append((logical, mesh_axes))
  return tuple(out)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings for a (boxed, abstract) tree whose leaves carry logical names.

  Unboxed leaves (step counters, scalars) are replicated.  A dimension that
  its mesh axes do not divide (a 65-character vocabulary on `tensor=2`) is
  replicated along those axes instead of failing: small or odd-sized
  dimensions cost little memory, and the rule table stays one table.

  Then every array is stored split over all the parameter mesh axes (those
  `embed`, `mlp` and `heads` map to: FSDP's and tensor parallelism's) even
  where the table gives one of them no dimension of it (`fsdp_fill`): a bias
  along `heads`, LoRA's B [rank, mlp], spherical angles [embed − 1, mlp] or
  [mlp − 1, embed] would otherwise be whole on every device of those axes,
  with their Adam moments.
  """
  rules = rules_tuple(rules)
  logical = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.meta.unbox(abstract_tree)
  table = dict(rules)
  storage = tuple(dict.fromkeys(a for name in ("embed", "mlp", "heads")
                                for a in _axes_of(table.get(name)) if mesh.shape[a] > 1))

  def fit(spec: PartitionSpec, names: PartitionSpec, leaf: Any) -> NamedSharding:
    shape = tuple(getattr(leaf, "shape", ()))
    spec = divisible_spec(spec, shape, mesh)
    if len(names):  # a boxed leaf: a parameter or a per-parameter state
      spec = fsdp_fill(spec, tuple(names), shape, mesh, storage)
    return NamedSharding(mesh, spec)

  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  return jax.tree.map(fit, mesh_specs, logical, shapes, is_leaf=is_spec)


def _axes_of(entry: Any) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def fsdp_fill(spec: PartitionSpec, names: tuple, shape: Sequence[int], mesh: Mesh,
              storage: Sequence[str]) -> PartitionSpec:
  """`spec` with each storage mesh axis it leaves unused added to the largest dimension
  it divides, never the scanned `layers` axis (the scan slices it layer by
  layer; split, every step would gather it)."""
  axes = [list(_axes_of(a)) for a in tuple(spec) + (None,) * (len(shape) - len(spec))]
  used = {a for dim in axes for a in dim}
  for m in storage:
    if m in used:
      continue
    fits = [i for i, d in enumerate(shape)
            if (i >= len(names) or names[i] != "layers")
            and d % (math.prod(mesh.shape[a] for a in axes[i]) * mesh.shape[m]) == 0]
    if fits:
      i = max(fits, key=lambda j: shape[j])
      axes[i].append(m)
      used.add(m)
  return PartitionSpec(*(None if not a else a[0] if len(a) == 1 else tuple(a) for a in axes))


def divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """`spec` with the mesh axes that do not divide their dimension removed."""
  fixed = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if names and dim % math.prod(mesh.shape[a] for a in names):
      names = ()
    fixed.append(None if not names else names[0] if len(names) == 1 else names)
  return PartitionSpec(*fixed)


def batch_sharding(mesh: Mesh, rules: Any, ndim: int = 2) -> NamedSharding:
  """Sharding of an input batch `[batch, length, ...]`."""
  axes = ("batch", "length") + (None,) * (ndim - 2)
  spec = nn.logical_to_mesh_axes(axes[:ndim], rules_tuple(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh, rules: Any) -> int:
  """How many ways the batch dimension is split."""
  spec = batch_sharding(mesh, rules).spec
  axes = spec[0] if len(spec) else None
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def validate_for_mesh(config: Any, mesh: Mesh) -> None:
  """Checks that need the mesh; all before any compute."""
  dp = data_parallel_size(mesh, config.axis_rules)
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if value <= 0 or value % dp or value % jax.process_count():
      raise UserError(f"{name}={value} must be a positive multiple of the data-parallel size "
                      f"{dp} and of the {jax.process_count()} processes")
  if config.batch_size % config.optimizer.grad_accum_steps or (
      (config.batch_size // config.optimizer.grad_accum_steps) % dp):
    raise UserError(f"batch_size={config.batch_size} must split into "
                    f"grad_accum_steps={config.optimizer.grad_accum_steps} micro-batches, "
                    f"each a multiple of the data-parallel size {dp}")
  for name in ("num_steps", "seq_len", "log_every", "eval_every", "checkpoint_every"):
    if config[name] <= 0:
      raise UserError(f"{name} must be positive, got {config[name]}")
