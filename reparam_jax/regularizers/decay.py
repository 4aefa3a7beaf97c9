"""Which parameters decoupled weight decay touches: path rules over a default.

  c.optimizer.decay_rules = ((r"embed/.*", False),      # no decay on embeddings
                             (r".*/kernel", True))

A rule `(regex, decay)` applies to a parameter when the regex fully matches
its path or the path of a subtree holding it (so `.*/kernel` covers a
low-rank θ `.../kernel/u`, `.../kernel/v`); the first rule that applies wins.
Parameters no rule applies to keep the default: decay on matrices and
embeddings (ndim ≥ 2), never on biases and norm scales (1-D); inside a
reparameterized θ, only the entries its transform names weight-like
(`Transform.decayable`: low-rank factors, LoRA's A and B, a variational μ, a
direction — never angles, ρ, radii or quantizer steps).  Decay acts on the
stored θ (it lives in the optimizer), not on an effective weight.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax

from reparam_jax.errors import UserError

PyTree = Any


def _key(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def parse_rules(rules: Sequence[Any]) -> list[tuple[re.Pattern, bool]]:
  out = []
  for i, item in enumerate(rules or ()):
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], bool)):
      raise UserError(f"config.optimizer.decay_rules[{i}] = {item!r}: expected a "
                      "(regex, True/False) pair")
    try:
      out.append((re.compile(item[0]), item[1]))
    except re.error as e:
      raise UserError(f"config.optimizer.decay_rules[{i}]: bad regex {item[0]!r}: {e}") from None
  return out


def decay_mask_fn(rules: Sequence[Any] = (),
                  default: Callable[[PyTree], PyTree] | None = None) -> Callable[[PyTree], PyTree]:
  """A mask function for `optax.adamw(mask=...)`: True where decay applies.

  `default(params)` is the mask where no rule applies (`Reparam.decay_mask`:
  the weight-like entries of each θ); without it, ndim ≥ 2.
  """
  parsed = parse_rules(rules)

  def mask(params: PyTree) -> PyTree:
    base = default(params) if default is not None else jax.tree.map(lambda p: p.ndim >= 2, params)

    def leaf(path, p, fallback):
      parts = [_key(k) for k in path]
      prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
      for regex, decay in parsed:
        if any(regex.fullmatch(x) for x in prefixes):
          return decay
      return bool(fallback)
    return jax.tree_util.tree_map_with_path(leaf, params, base)

  return mask
