"""Reparameterizations of a Flax model's weights, selected by config rules.

The package face: re-exports only.  `Reparam` (api.py) is what the trainer
and tools use; the transforms are in `transforms/` (importing that package
registers them); the mechanism is `base.py` (protocol, registry),
`compose.py`, `rules.py`, `intercept.py` and `state.py`.  See
docs/reparam.md for the math of each transform, the rule mini-language and
how to add a transform.
"""

from reparam_jax.reparam import transforms  # noqa: F401 (registers the built-in transforms)
from reparam_jax.reparam.adapters import (
    AdapterBank,
    extract_adapter,
    insert_adapter,
    load_adapter,
    save_adapter,
)
from reparam_jax.reparam.api import Reparam, wrap
from reparam_jax.reparam.base import TRANSFORMS, Transform, WrapperTransform, register
from reparam_jax.reparam.kernels import LatentKernel, LoRAKernel, LowRankKernel, materialize
from reparam_jax.reparam.rules import Plan, parse_spec
from reparam_jax.reparam.stats import format_report, weight_stats

__all__ = [
    "TRANSFORMS", "AdapterBank", "LatentKernel", "LoRAKernel", "LowRankKernel", "Plan", "Reparam",
    "Transform",
    "WrapperTransform", "extract_adapter", "format_report", "insert_adapter",
    "load_adapter", "materialize", "parse_spec", "register", "save_adapter", "weight_stats",
    "wrap",
]
