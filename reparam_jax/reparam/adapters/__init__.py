"""Adapters: the trainable leaves of wrapper stages (LoRA, ...) handled apart from the base.

  single.py  one adapter: extract, insert, save/load (orbax with shardings, or legacy .npz)
  named.py   `AdapterBank`: several named adapters on one base (add/load/switch/...)
  merge.py   merging LoRA adapters (linear, TIES, DARE) into the base or a new adapter
  select.py  adapters stacked on an axis, one per batch row, one compiled program

See docs/adapters.md.
"""

from reparam_jax.reparam.adapters.merge import (
    merge_deltas,
    merge_into_base,
    merge_to_adapter,
    unmerge_from_base,
)
from reparam_jax.reparam.adapters.named import AdapterBank
from reparam_jax.reparam.adapters.select import row_index, stack_adapters, stack_modules
from reparam_jax.reparam.adapters.single import (
    extract_adapter,
    insert_adapter,
    load_adapter,
    module_leaves,
    null_adapter,
    read_adapter,
    save_adapter,
    write_adapter,
)

__all__ = [
    "AdapterBank", "extract_adapter", "insert_adapter", "load_adapter", "merge_deltas",
    "merge_into_base", "merge_to_adapter", "module_leaves", "null_adapter", "read_adapter",
    "row_index", "save_adapter", "stack_adapters", "stack_modules", "unmerge_from_base",
    "write_adapter",
]
