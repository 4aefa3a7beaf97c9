"""The classify task's data: a labelled source, or a dataset `config.data.name` names.

With `data.source` set, the examples come from that labelled source and
`data.eval_source` (data/labelled: TSV, JSON Lines or a TFDS dataset, with an
optional sentence pair).  Otherwise `data.name` is `sst2` (GLUE SST-2
sentiment, data/sst2.py) or `shakespeare_order` (Tiny Shakespeare lines as
written vs word-shuffled, data/word_order.py).  Each gives its class names and
`{split: (texts, labels, pairs or None)}` for `train` and `validation`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from reparam_jax.data import sst2, word_order
from reparam_jax.data.labelled import load_labelled
from reparam_jax.errors import UserError

Splits = dict[str, tuple[list[str], np.ndarray, list[str] | None]]

DATASETS = {
    "sst2": (sst2.LABEL_NAMES, sst2.load_sst2),
    word_order.NAME: (word_order.LABEL_NAMES, word_order.load_shakespeare_order),
}


def load_classification(data: ml_collections.ConfigDict) -> tuple[tuple[str, ...], Splits]:
  """(class names, splits) of `data.source`/`data.eval_source`, else of the dataset `data.name`."""
  if data.get("source"):
    return load_labelled(data)
  if data.name not in DATASETS:
    raise UserError(f"the classify task reads data.name in {', '.join(sorted(DATASETS))}, "
                    f"got {data.name!r}; or set data.source and data.eval_source to labelled "
                    "files (tsv:, jsonl:) or a TFDS dataset")
  names, load = DATASETS[data.name]
  return names, {split: (texts, labels, None) for split, (texts, labels) in load(data).items()}
