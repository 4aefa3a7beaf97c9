"""BERT's token corruption for masked language modelling, done on the host.

Of the maskable tokens of a sequence (never padding or special pieces such
as [CLS]/[SEP]), `round(rate · n)` positions are chosen (at least one, at
most `max_predictions`); of those, 80% become [MASK], 10% a random ordinary
token and 10% stay unchanged (Devlin et al. 2019, §3.1).  The positions,
their original tokens and a weight (0 on the padding slots of the fixed-size
list) go to the model, which predicts only there.

All randomness comes from the `np.random.Generator` the caller passes: the
train pipeline's `random_map` seeds it from (seed, element index), so a
resumed run re-creates exactly the same masks.
"""

from __future__ import annotations

import math

import numpy as np


def max_predictions_for(seq_len: int, rate: float) -> int:
  return max(1, math.ceil(seq_len * rate))


def mask_tokens(ids_L: np.ndarray, maskable_L: np.ndarray, rng: np.random.Generator, *,
                mask_id: int, random_ids: np.ndarray, rate: float = 0.15,
                max_predictions: int) -> dict[str, np.ndarray]:
  """Corrupted ids plus `mlm_positions`/`mlm_targets`/`mlm_weights` of length `max_predictions`."""
  candidates = np.flatnonzero(maskable_L)
  n = 0
  if len(candidates):
    n = min(max_predictions, max(1, int(round(len(candidates) * rate))))
  positions = np.sort(rng.choice(candidates, size=n, replace=False)) if n else np.zeros(0, int)
  u = rng.random(n)
  corrupted = ids_L.copy()
  corrupted[positions[u < 0.8]] = mask_id
  to_random = positions[(u >= 0.8) & (u < 0.9)]
  corrupted[to_random] = rng.choice(random_ids, size=len(to_random))
  out_pos = np.zeros(max_predictions, np.int32)
  out_tgt = np.zeros(max_predictions, np.int32)
  out_w = np.zeros(max_predictions, np.float32)
  out_pos[:n], out_tgt[:n], out_w[:n] = positions, ids_L[positions], 1.0
  return {"ids": corrupted.astype(np.int32), "mlm_positions": out_pos, "mlm_targets": out_tgt,
          "mlm_weights": out_w}
