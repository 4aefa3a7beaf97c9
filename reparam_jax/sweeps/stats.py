"""Seed summaries and paired comparisons for ablation tables (numpy + scipy.stats only).

A row of an ablation is run at several seeds, and every row uses the same
seeds, so two rows are compared *paired*: per seed (the same data order and
initialization noise on both sides) or, for accuracy, per seed and evaluation
example (the same dev examples on both sides). Pairing removes the spread both
rows share, which is what makes a 1-point accuracy difference testable at all.

The per-example test is Sellam et al.'s paired multi-bootstrap (ICLR 2022,
"The MultiBERTs"): each resample draws seeds and examples with replacement, the
same draw for both rows, so its interval carries both the seed-to-seed spread
of the difference and its dependence on which dev examples were drawn. A
bootstrap over examples alone, of the seed-averaged scores, would treat a
difference that flips sign between seeds as settled.

Significance is at 95 %: a difference is significant when its 95 % interval
excludes 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95  # every interval and test in the tables
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP = "paired bootstrap over examples"
MULTI_BOOTSTRAP = "paired bootstrap over seeds and examples"
SEED_T_TEST = "paired t-test over seeds"
UNTESTED = "not testable"


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean of a row's per-seed values with the sample std and a 95 % t-interval of the mean.

  With one value there is no spread, so `std` and the interval are None.
  """

  n: int
  mean: float | None
  std: float | None
  ci_low: float | None
  ci_high: float | None


@dataclasses.dataclass(frozen=True)
class Comparison:
  """`diff` = mean(a) − mean(b) with its 95 % interval and two-sided p-value.

  `method` names the test (MULTI_BOOTSTRAP, BOOTSTRAP (one seed), SEED_T_TEST,
  or UNTESTED when there was nothing to test with: then the interval, p and
  `significant` are None); `n` counts the examples resampled or the seeds paired.
  """

  diff: float
  ci_low: float | None
  ci_high: float | None
  p: float | None
  significant: bool | None
  method: str
  n: int

  @property
  def testable(self) -> bool:
    return self.significant is not None


def t_quantile(df: int, level: float = LEVEL) -> float:
  """The two-sided `level` quantile of Student's t with `df` degrees of freedom."""
  return float(scipy_stats.t.ppf(0.5 + level / 2, df))


def summary(values: Sequence[float]) -> Summary:
  """Mean ± sample std (ddof=1) and the 95 % t-interval of the mean over seeds."""
  x = np.asarray(values, dtype=np.float64)
  n = int(x.size)
  if n == 0:
    return Summary(0, None, None, None, None)
  mean = float(x.mean())
  if n == 1:
    return Summary(1, mean, None, None, None)
  std = float(x.std(ddof=1))
  half = t_quantile(n - 1) * std / math.sqrt(n)
  return Summary(n, mean, std, mean - half, mean + half)


def _significant(lo: float, hi: float) -> bool:
  return lo > 0 or hi < 0


def paired_bootstrap(scores_a: Sequence[float] | np.ndarray, scores_b: Sequence[float] | np.ndarray,
                     n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Comparison:
  """Paired bootstrap of mean(a) − mean(b): percentile interval, two-sided p.

  `scores_a[s, i]` and `scores_b[s, i]` are the two rows' scores (for accuracy:
  0/1 correctness) at the same seed s on the same example i; a 1-D array is one
  seed. Each resample draws seeds and examples with replacement, both rows
  together (with one seed, examples only), so the interval reflects how much
  the difference depends on the seeds that were run and on the dev examples
  that happened to be drawn. Deterministic for a given `seed`.
  """
  a = np.asarray(scores_a, dtype=np.float64)
  b = np.asarray(scores_b, dtype=np.float64)
  if a.shape != b.shape or a.ndim not in (1, 2):
    raise ValueError(f"paired_bootstrap: shapes {a.shape} vs {b.shape}; pairs need the same "
                     "examples in the same order, as [examples] or [seeds, examples]")
  d_SxN = (a - b).reshape(-1, a.shape[-1])
  k, n = d_SxN.shape
  if n == 0 or k == 0:
    raise ValueError("paired_bootstrap: no examples")
  diff = float(d_SxN.mean())
  rng = np.random.default_rng(seed)
  means = np.empty(n_resamples, dtype=np.float64)
  chunk = max(1, min(n_resamples, 4_000_000 // n))  # ~16 MB of int32 indices at a time
  for start in range(0, n_resamples, chunk):
    stop = min(n_resamples, start + chunk)
    idx_RxN = rng.integers(0, n, size=(stop - start, n), dtype=np.int32)
    if k == 1:
      means[start:stop] = d_SxN[0][idx_RxN].mean(axis=1)
    else:
      # Drawing k seeds with replacement is weighting each seed by its count / k.
      weights_RxS = rng.multinomial(k, np.full(k, 1 / k), size=stop - start) / k
      per_example_RxN = weights_RxS @ d_SxN
      means[start:stop] = np.take_along_axis(per_example_RxN, idx_RxN, axis=1).mean(axis=1)
  tail = (1 - LEVEL) / 2
  lo, hi = (float(v) for v in np.quantile(means, [tail, 1 - tail]))
  # Two-sided p: twice the smaller share of resampled differences on either side of 0,
  # counted with +1 (the observed sample) so a finite resampling never claims p = 0.
  below, above = int(np.sum(means <= 0)), int(np.sum(means >= 0))
  p = min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1))
  return Comparison(diff, lo, hi, p, _significant(lo, hi),
                    BOOTSTRAP if k == 1 else MULTI_BOOTSTRAP, n)


def paired_seeds(values_a: Sequence[float], values_b: Sequence[float]) -> Comparison:
  """Paired t-test of mean(a − b) over seeds; `values_*[i]` are both rows at the same seed.

  Needs 2 or more pairs for a spread; with one pair the difference is
  reported as UNTESTED.
  """
  a = np.asarray(values_a, dtype=np.float64).ravel()
  b = np.asarray(values_b, dtype=np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired_seeds: {a.size} vs {b.size} values; give both rows' values "
                     "at the same seeds")
  n = int(a.size)
  if n == 0:
    raise ValueError("paired_seeds: no shared seeds")
  d = a - b
  diff = float(d.mean())
  if n < 2:
    return Comparison(diff, None, None, None, None, UNTESTED, n)
  se = float(d.std(ddof=1)) / math.sqrt(n)
  if se == 0:  # every seed moved by exactly the same amount
    p = 1.0 if diff == 0 else 0.0
    return Comparison(diff, diff, diff, p, diff != 0, SEED_T_TEST, n)
  half = t_quantile(n - 1) * se
  p = float(2 * scipy_stats.t.sf(abs(diff) / se, n - 1))
  lo, hi = diff - half, diff + half
  return Comparison(diff, lo, hi, p, _significant(lo, hi), SEED_T_TEST, n)
