"""The classify task's data: a labelled source, or a dataset `config.data.name` names.

With `data.source` set, the examples come from that labelled source and
`data.eval_source` (data/labelled: TSV, JSON Lines or a TFDS dataset, with an
optional sentence pair).  Otherwise `data.name` is `sst2` (GLUE SST-2
sentiment, data/sst2.py) or `shakespeare_order` (Tiny Shakespeare lines as
written vs word-shuffled, data/word_order.py).  Each gives its class names and
`{split: (texts, labels, pairs or None)}` for `train` and `validation`.

A held-out split for tuning (sweeps/tuning.py): `data.holdout_examples=N` moves N
training examples, chosen by a permutation with the fixed seed `HOLDOUT_SEED`
(never `config.seed`: every row and every seed of an experiment carves the same
split), out of `train`; `data.evaluate_on="holdout"` then makes them the split
the task evaluates (`validation` in the returned splits), so a search chooses its
setting without reading the reported split.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from reparam_jax.data import sst2, word_order
from reparam_jax.data.labelled import load_labelled
from reparam_jax.errors import UserError

Splits = dict[str, tuple[list[str], np.ndarray, list[str] | None]]

HOLDOUT_SEED = 37  # issue 37; fixed so the held-out split never depends on config.seed
EVALUATE_ON = ("validation", "holdout")

DATASETS = {
    "sst2": (sst2.LABEL_NAMES, sst2.load_sst2),
    word_order.NAME: (word_order.LABEL_NAMES, word_order.load_shakespeare_order),
}


def load_classification(data: ml_collections.ConfigDict) -> tuple[tuple[str, ...], Splits]:
  """(class names, splits) of `data.source`/`data.eval_source`, else of the dataset `data.name`."""
  evaluate_on, n_holdout = holdout_settings(data)
  if data.get("source"):
    names, splits = load_labelled(data)
  else:
    names, splits = _load_dataset(data)
  return names, with_holdout(splits, n_holdout, evaluate_on)


def holdout_settings(data: ml_collections.ConfigDict) -> tuple[str, int]:
  """(`data.evaluate_on`, `data.holdout_examples`), checked before any data is read."""
  evaluate_on = data.get("evaluate_on", "validation") or "validation"
  n = data.get("holdout_examples", 0) or 0
  if evaluate_on not in EVALUATE_ON:
    raise UserError(f"data.evaluate_on={evaluate_on!r}: use 'validation' (the reported split) or "
                    "'holdout' (data.holdout_examples training examples held out for tuning)")
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise UserError(f"data.holdout_examples={n!r}: expected a non-negative integer (0 = none)")
  if evaluate_on == "holdout" and n == 0:
    raise UserError("data.evaluate_on='holdout' but data.holdout_examples=0: set "
                    "data.holdout_examples to the number of training examples to hold out")
  return evaluate_on, n


def holdout_indices(n_train: int, n_holdout: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept training indices, held-out indices), each ascending, from a fixed permutation.

  Depends only on the two sizes, so every run that trains on the same data carves
  the same held-out examples whatever its seed, row or position in a sweep.
  """
  if n_holdout >= n_train:
    raise UserError(f"data.holdout_examples={n_holdout} leaves no training examples (the "
                    f"training split has {n_train}); hold out fewer")
  order = np.random.default_rng(HOLDOUT_SEED).permutation(n_train)
  return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def with_holdout(splits: Splits, n_holdout: int, evaluate_on: str = "validation") -> Splits:
  """`splits` without `n_holdout` training examples; with `evaluate_on="holdout"` those
  replace `validation` (the split the task evaluates), so the reported split is never read."""
  if n_holdout == 0:
    return splits
  texts, labels, pairs = splits["train"]
  keep, held = holdout_indices(len(texts), n_holdout)

  def subset(idx: np.ndarray) -> tuple[list[str], np.ndarray, list[str] | None]:
    return ([texts[i] for i in idx], labels[idx],
            None if pairs is None else [pairs[i] for i in idx])

  out = dict(splits, train=subset(keep))
  if evaluate_on == "holdout":
    out["validation"] = subset(held)
  return out


def _load_dataset(data: ml_collections.ConfigDict) -> tuple[tuple[str, ...], Splits]:
  if data.name not in DATASETS:
    raise UserError(f"the classify task reads data.name in {', '.join(sorted(DATASETS))}, "
                    f"got {data.name!r}; or set data.source and data.eval_source to labelled "
                    "files (tsv:, jsonl:) or a TFDS dataset")
  names, load = DATASETS[data.name]
  return names, {split: (texts, labels, None) for split, (texts, labels) in load(data).items()}
