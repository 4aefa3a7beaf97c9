"""Pre-training examples for the encoder: masked LM, optionally with NSP pairs.

Corpora (`config.data.name`):

* `sst2`: each training sentence is one example `[CLS] s [SEP]`.  SST-2 has
  no sentence order (its rows are shuffled phrases, many of them sub-phrases
  of the same review sentence), so it supports MLM only;
* `tiny_shakespeare`: documents are the speeches (blank-line separated),
  segments their lines; with NSP an example is `[CLS] A [SEP] B [SEP]` where
  B is A's next line or a line from another speech (50/50);
* any text source (`data.source`, held out `data.eval_source`; data/sources):
  its documents, segmented at line breaks.

`MlmExamples(k, rng)` builds example `k` from the generator the pipeline
hands it, so masks and NSP coins are a pure function of (seed, position).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from reparam_jax.data import corpus, lm_text
from reparam_jax.data.masking import mask_tokens, max_predictions_for
from reparam_jax.data.sst2 import load_sst2
from reparam_jax.data.text_pairs import NspPairs, Specials, pack
from reparam_jax.errors import UserError


def load_documents(data: ml_collections.ConfigDict) -> dict[str, list[list[str]]]:
  """`{split: documents}`, a document being a list of segments (text lines)."""
  if data.get("source"):  # any text source: its documents, segmented at line breaks
    return {split: [segments for doc in docs
                    if (segments := [line for line in doc.splitlines() if line.strip()])]
            for split, docs in corpus.documents_in_memory(data).items()}
  if data.name == "sst2":
    return {split: [[s] for s in sentences] for split, (sentences, _) in load_sst2(data).items()}
  if data.name == "tiny_shakespeare":
    return {split: [[line for line in speech.splitlines() if line.strip()]
                    for speech in text.split("\n\n") if speech.strip()]
            for split, text in lm_text.load_splits(data).items()}
  raise UserError(f"masked-LM pre-training reads sst2 or tiny_shakespeare, got {data.name!r}; "
                  "or set data.source and data.eval_source (reparam_jax/data/sources)")


class MlmExamples:
  """Example `k` of the corpus: MLM-corrupted ids (+ NSP pair and label)."""

  def __init__(self, documents: list[list[np.ndarray]], seq_len: int, sp: Specials, *,
               nsp: bool, rate: float = 0.15):
    self.seq_len, self.sp, self.rate, self.nsp = seq_len, sp, rate, nsp
    self.max_predictions = max_predictions_for(seq_len, rate)
    self._random_ids = sp.random_ids()
    self._never = np.asarray(sp.never_mask)
    if nsp:
      try:
        self._pairs = NspPairs(documents)
      except ValueError as e:
        raise UserError(f"cannot build NSP pairs from this corpus: {e}") from None
    else:
      self._segments = [s for doc in documents for s in doc if len(s)]

  def __len__(self) -> int:
    return len(self._pairs) if self.nsp else len(self._segments)

  def __call__(self, k: int, rng: np.random.Generator,
               seq_len: int | None = None) -> dict[str, np.ndarray]:
    seq_len = seq_len or self.seq_len
    if self.nsp:
      a, b, is_next = self._pairs.pair(int(k), rng)
      rec = pack(a, b, seq_len, self.sp)
      rec["nsp_label"] = np.asarray([is_next], np.int32)  # [1]: batch leaves need rank ≥ 2
    else:
      rec = pack(self._segments[int(k)], None, seq_len, self.sp)
    maskable = rec["padding_mask"] & ~np.isin(rec["ids"], self._never)
    rec.update(mask_tokens(rec["ids"], maskable, rng, mask_id=self.sp.mask,
                           random_ids=self._random_ids, rate=self.rate,
                           max_predictions=max_predictions_for(seq_len, self.rate)))
    return rec

  def lengths(self) -> np.ndarray:
    """Packed single-segment lengths (with [CLS]/[SEP]), capped at seq_len; MLM-only corpora."""
    return np.minimum([len(s) + 2 for s in self._segments], self.seq_len)

  def batch(self, indices: np.ndarray, seq_len: int, rng: np.random.Generator) -> dict:
    rows = [self(int(k), rng, seq_len) for k in indices]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
