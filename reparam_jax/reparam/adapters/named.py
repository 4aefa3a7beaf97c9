"""Several named adapters on one base model: add, load, switch, enable/disable, delete, save.

The functional counterpart of PEFT's `add_adapter` / `set_adapter` /
`disable_adapter` / `delete_adapter` / `load_adapter`: an `AdapterBank` is a
frozen value (every operation returns a new bank) holding `{name: adapter}`,
which one is active and whether adapters are enabled.  The model and its
params stay as they are; `bank.params(params)` gives the params to run with:

  bank = AdapterBank.create(params, rp)          # the base's adapter layout
  bank = bank.add("math", math_params).load("code", "ckpt/code").switch("code")
  y = model.apply({"params": bank.params(params)}, x)
  y0 = model.apply({"params": bank.disable().params(params)}, x)   # the base model

Every adapter is checked against the base's layout (paths and shapes) when
it enters the bank.  An adapter may cover only some of the base's adapter
leaves (LoRA on `query` of a base whose rules adapt `query` and `value`):
the others take the "no change" value (LoRA: B = 0), as does every leaf
while the bank is disabled, so a disabled bank runs the base model
exactly (for LoRA bit-exactly: `(x A) 0 = 0`).  Same shapes whatever is
active, so switching adapters does not recompile a jitted step.

`modules_to_save` (PEFT's name): ordinary parameters every adapter carries
whole, e.g. `("classifier",)` for a task head trained beside LoRA; see
single.py.  Their "no change" value is the base params' own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.reparam.adapters.single import (
  Adapter,
  abstract,
  check_fits,
  extract_adapter,
  insert_adapter,
  module_leaves,
  null_adapter,
  read_adapter,
  write_adapter,
)
from reparam_jax.reparam.api import Reparam

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class AdapterBank:
  """`{name: adapter}` for one base model, the active name and an enabled flag."""

  rp: Reparam
  layout: Mapping[str, Any]  # path -> ShapeDtypeStruct (with sharding) of the base's adapter leaves
  null: Mapping[str, Any]  # the "no change" adapter (LoRA: B = 0)
  adapters: Mapping[str, Adapter] = dataclasses.field(default_factory=dict)
  active: str | None = None
  enabled: bool = True
  modules_to_save: tuple[str, ...] = ()  # regexes of whole parameters each adapter carries
  module_paths: frozenset[str] = frozenset()  # the leaf paths they cover

  @classmethod
  def create(cls, params: PyTree, rp: Reparam, modules_to_save: Sequence[str] = ()
             ) -> AdapterBank:
    """An empty bank for the base `params` (θ form, e.g. `rp.from_dense(dense)`); each
    adapter also carries the leaves of `modules_to_save` (e.g. `("classifier",)`)."""
    mods = tuple(modules_to_save)
    return cls(rp, abstract(extract_adapter(params, rp, mods)),
               null_adapter(params, rp, mods), modules_to_save=mods,
               module_paths=frozenset(module_leaves(params, mods)))

  # --- queries ----------------------------------------------------------------
  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.adapters)

  def get(self, name: str) -> Adapter:
    """The adapter called `name` (`{path: array}`)."""
    self._known(name)
    return dict(self.adapters[name])

  def complete(self, name: str) -> Adapter:
    """`name`'s adapter with every base adapter leaf it lacks at its "no change" value."""
    return {**self.null, **self.get(name)}

  def params(self, params: PyTree) -> PyTree:
    """`params` with the active adapter in (the "no change" adapter when disabled or none)."""
    use = dict(self.null)
    if self.enabled and self.active is not None:
      use.update(self.adapters[self.active])
    return insert_adapter(params, use)

  # --- changes (each returns a new bank) --------------------------------------
  def add(self, name: str, adapter: Mapping[str, Any] | None = None, *,
          params: PyTree | None = None, activate: bool | None = None) -> AdapterBank:
    """Adds `adapter` (`{path: array}`), or the adapter in a trained `params` tree.

    The first adapter added becomes active (as in PEFT); `activate` overrides.
    """
    if not isinstance(name, str) or not name:
      raise UserError(f"adapter name must be a non-empty string, got {name!r}")
    if name in self.adapters:
      raise UserError(f"adapter {name!r} already exists; delete it first or pick another name "
                      f"(known: {', '.join(self.adapters)})")
    if (adapter is None) == (params is None):
      raise UserError("add(name, adapter) or add(name, params=...): give exactly one")
    if params is not None:
      adapter = extract_adapter(params, self.rp, self.modules_to_save)
    adapter = {p: meta.unbox(v) for p, v in adapter.items()}
    check_fits(adapter, self.layout, f"adapter {name!r}:")
    adapters = {**self.adapters, name: adapter}
    first = activate if activate is not None else self.active is None
    return dataclasses.replace(self, adapters=adapters, active=name if first else self.active)

  def load(self, name: str, path: str, *, activate: bool | None = None) -> AdapterBank:
    """Adds the adapter saved at `path`, each leaf on the base's sharding for that path."""
    return self.add(name, read_adapter(path, self.layout), activate=activate)

  def switch(self, name: str) -> AdapterBank:
    """Makes `name` the active adapter (and enables adapters)."""
    self._known(name)
    return dataclasses.replace(self, active=name, enabled=True)

  set_adapter = switch

  def enable(self) -> AdapterBank:
    return dataclasses.replace(self, enabled=True)

  def disable(self) -> AdapterBank:
    """Adapters off: `params()` gives the base model's weights."""
    return dataclasses.replace(self, enabled=False)

  def delete(self, name: str) -> AdapterBank:
    """Removes `name`; if it was active, no adapter is active afterwards."""
    self._known(name)
    adapters = {k: v for k, v in self.adapters.items() if k != name}
    return dataclasses.replace(self, adapters=adapters,
                               active=None if self.active == name else self.active)

  def save(self, name: str, path: str) -> None:
    """Writes `name` alone (orbax directory, or `.npz` for the legacy single-host file)."""
    write_adapter(path, self.get(name))

  def _known(self, name: str) -> None:
    if name not in self.adapters:
      raise UserError(f"unknown adapter {name!r}; known: {', '.join(self.adapters) or 'none'}")
