"""T5 span corruption: exact round trip, span statistics, lengths, determinism, batching."""

import numpy as np
import pytest

from reparam_jax.data import corpus
from reparam_jax.data import span_corruption as sc
from reparam_jax.data.pipeline import train_loader
from reparam_jax.errors import UserError

SENTINELS = tuple(range(999, 899, -1))  # T5 style: from the top of the vocabulary down
EOS, PAD = 1, 0
KW = {"noise_density": 0.15, "mean_span": 3.0}


def _tokens(n, seed=0):
  return np.random.default_rng(seed).integers(2, 900, size=n).astype(np.int32)


def _runs(mask):
  """Lengths of the True runs of a bool mask."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def _uncorrupt(inputs, targets):
  """Each sentinel of the inputs replaced by what follows the same sentinel in the targets."""
  assert inputs[-1] == EOS and targets[-1] == EOS
  spans, k = {}, None
  for t in targets[:-1]:
    if t in SENTINELS:
      k = int(t)
      spans[k] = []
    else:
      spans[k].append(int(t))
  out = []
  for t in inputs[:-1]:
    out.extend(spans.pop(int(t)) if t in SENTINELS else [int(t)])
  assert not spans  # every target span was used once
  return np.array(out)


def test_inputs_and_targets_rebuild_the_window_exactly():
  rng = np.random.default_rng(123)
  for seed in range(300):
    n = int(rng.integers(2, 300))
    tokens = _tokens(n, seed)
    inputs, targets = sc.span_corrupt(tokens, np.random.default_rng(seed), **KW,
                                      sentinel_ids=SENTINELS, eos_id=EOS)
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(_uncorrupt(inputs, targets), tokens)
    assert (len(inputs), len(targets)) == sc.corrupted_lengths(n, **KW)
    _, num_spans = sc.split_lengths(n, **KW)
    assert list(inputs[np.isin(inputs, SENTINELS)]) == list(SENTINELS[:num_spans])


# T5's counts (random_spans_noise_mask): num_noise = round(n · density) and num_spans =
# round(num_noise / mean_span), worked out by hand at density 0.15, mean span 3.  Both
# round half to even (tf.round): 10·0.15 = 1.5 → 2, 30·0.15 = 4.5 → 4, 70·0.15 = 10.5 → 10.
T5_COUNTS = {10: (2, 1), 30: (4, 1), 64: (10, 3), 70: (10, 3), 114: (17, 6), 568: (85, 28)}


def test_noise_count_and_mean_span_length():
  for n, (num_noise, num_spans) in T5_COUNTS.items():
    assert sc.split_lengths(n, **KW) == (num_noise, num_spans)
    for seed in range(50):
      mask = sc.noise_mask(n, **KW, rng=np.random.default_rng(seed))
      assert mask.shape == (n,) and mask.dtype == bool
      assert mask.sum() == num_noise and not mask[0]  # starts with a non-noise run, as in T5
      # non-noise and noise runs alternate, num_spans of each
      assert len(_runs(mask)) == len(_runs(~mask)) == num_spans


def test_span_lengths_are_a_uniform_random_composition():
  # T5: "all masks are equally likely", i.e. the noise (and the non-noise) run lengths are a
  # uniformly random composition of N tokens into k runs; in one, a given run has length 1
  # with probability C(N−2, k−2) / C(N−1, k−1) = (k − 1) / (N − 1).
  masks = [sc.noise_mask(568, **KW, rng=np.random.default_rng(s)) for s in range(300)]
  for runs, total in (([_runs(m) for m in masks], 85), ([_runs(~m) for m in masks], 483)):
    runs = np.concatenate(runs)
    assert abs(np.mean(runs == 1) - 27 / (total - 1)) < 0.02
    assert np.mean(runs) == pytest.approx(total / 28)


def test_span_lengths_vary_and_cover_the_composition():
  # Random segmentation: for 568 tokens (85 noise, 28 spans) both short and long spans occur.
  runs = np.concatenate([_runs(sc.noise_mask(568, **KW, rng=np.random.default_rng(s)))
                         for s in range(50)])
  assert runs.min() == 1 and runs.max() >= 8


def test_split_lengths_clamps():
  assert sc.split_lengths(2, **KW) == (1, 1)
  assert sc.split_lengths(5, noise_density=0.9, mean_span=1.0) == (4, 1)
  assert sc.split_lengths(100, noise_density=0.5, mean_span=1.0) == (50, 50)


def t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length,
                           extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1):
  """T5's `random_spans_helper` (t5/data/preprocessors.py), restated line by line."""
  def _tokens_length_to_inputs_length_targets_length(tokens_length):
    num_noise_tokens = int(round(tokens_length * noise_density))  # noqa: RUF046 (T5 verbatim)
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))  # noqa: RUF046
    return (num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while _tokens_length_to_inputs_length_targets_length(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs_length, targets_length = _tokens_length_to_inputs_length_targets_length(tokens_length)
  # T5: "minor hack to get the targets length to be equal to inputs length"
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


@pytest.mark.parametrize("noise_density,mean_span", [(0.15, 3.0), (0.5, 3.0), (0.5, 2.0),
                                                     (0.5, 8.0), (0.3, 3.0)])
def test_raw_length_for_is_t5_random_spans_helper(noise_density, mean_span):
  # From 32 on, T5's unclamped counts give at least one span (shorter windows are clamped to
  # one span here, as T5's random_spans_noise_mask does, but not in its helper).
  for inputs_length in range(32, 300):
    raw, targets_length = sc.raw_length_for(inputs_length, noise_density, mean_span)
    assert (raw, targets_length) == t5_random_spans_helper(inputs_length, noise_density,
                                                           mean_span), inputs_length
    # What make_transform needs: the corrupted window fits (T5's special case may leave
    # one targets slot of padding).
    fitted_inputs, fitted_targets = sc.corrupted_lengths(raw, noise_density, mean_span)
    assert fitted_inputs <= inputs_length and fitted_targets <= targets_length
    assert targets_length <= fitted_targets + 1


def test_raw_length_for_at_t5_settings():
  assert t5_random_spans_helper(512, 0.15, 3.0) == (568, 114)
  assert sc.raw_length_for(512, **KW) == (568, 114)
  # Density 0.5: the largest raw length that fits (767) corrupts to targets 513 > inputs 512,
  # so T5 takes one token less: 766 raw tokens, 512 inputs and 512 targets.
  assert t5_random_spans_helper(512, 0.5, 3.0) == (766, 512)
  assert sc.raw_length_for(512, noise_density=0.5, mean_span=3.0) == (766, 512)
  assert sc.corrupted_lengths(766, noise_density=0.5, mean_span=3.0) == (512, 512)


def test_raw_length_for_is_the_largest_that_fits():
  for inputs_length in range(3, 300):
    raw, targets_length = sc.raw_length_for(inputs_length, **KW)
    fitted_inputs, fitted_targets = sc.corrupted_lengths(raw, **KW)
    assert fitted_inputs <= inputs_length and fitted_targets == targets_length
    assert sc.corrupted_lengths(raw + 1, **KW)[0] > inputs_length


def test_same_seed_same_output_different_seeds_differ():
  tokens = _tokens(200)
  a = sc.span_corrupt(tokens, np.random.default_rng(7), **KW, sentinel_ids=SENTINELS, eos_id=EOS)
  b = sc.span_corrupt(tokens, np.random.default_rng(7), **KW, sentinel_ids=SENTINELS, eos_id=EOS)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  masks = {sc.noise_mask(200, **KW, rng=np.random.default_rng(s)).tobytes() for s in range(20)}
  assert len(masks) == 20


def _transform(inputs_length=64):
  raw, targets_length = sc.raw_length_for(inputs_length, **KW)
  fn = sc.make_transform(inputs_length=inputs_length, targets_length=targets_length, **KW,
                         sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD)
  return raw, targets_length, fn


def test_make_transform_shapes_shift_and_spans():
  raw, targets_length, fn = _transform(64)
  assert (raw, targets_length) == (70, 14)
  for seed in range(20):
    ex = fn({"tokens": _tokens(raw, seed)}, np.random.default_rng(seed))
    assert {k: (v.shape, v.dtype) for k, v in ex.items()} == {
      "inputs": ((64,), np.int32), "inputs_mask": ((64,), bool),
      "targets": ((14,), np.int32), "decoder_inputs": ((14,), np.int32),
      "target_weights": ((14,), np.float32), "target_spans": ((14,), np.int32)}
    assert ex["inputs_mask"].all() and ex["target_weights"].all()  # raw_length_for fills both
    assert ex["decoder_inputs"][0] == PAD
    np.testing.assert_array_equal(ex["decoder_inputs"][1:], ex["targets"][:-1])
    _, num_spans = sc.split_lengths(raw, **KW)
    spans = ex["target_spans"]
    assert spans.max() == num_spans and spans[-1] == 0  # EOS is in no span
    # Span k's run starts with its sentinel and the runs come in order.
    starts = np.flatnonzero(np.diff(np.concatenate([[0], spans])) != 0)
    np.testing.assert_array_equal(ex["targets"][starts[:num_spans]], SENTINELS[:num_spans])


def test_make_transform_pads_a_short_window():
  _, _, fn = _transform(64)
  ex = fn({"tokens": _tokens(20)}, np.random.default_rng(0))
  n_in, n_tgt = sc.corrupted_lengths(20, **KW)
  assert ex["inputs_mask"].sum() == n_in and (ex["inputs"][n_in:] == PAD).all()
  assert ex["target_weights"].sum() == n_tgt and (ex["target_spans"][n_tgt:] == 0).all()


def test_train_loader_feeds_the_transform_a_generator():
  raw, _, fn = _transform(32)
  source = sc.SpanCorruptionSource(np.arange(2, 202, dtype=np.int32), raw)
  assert len(source) == 200 - raw + 1 and len(source[len(source) - 1]["tokens"]) == raw
  batch = next(train_loader(source, 4, seed=0, random_transform=fn))
  assert batch["inputs"].shape == (4, 32) and batch["target_weights"].all()


def _eval(tokens, raw, targets_length, inputs_length=64):
  return list(sc.eval_batches(tokens, raw_length=raw, global_batch=8, seed=3,
                              inputs_length=inputs_length, targets_length=targets_length, **KW,
                              sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD))


def test_eval_batches_cover_every_window_once_and_repeat_exactly():
  raw, targets_length, _ = _transform(64)
  tokens = _tokens(raw * 11 + 30)  # 11 full windows and a 30-token tail: 12 rows, 2 batches
  batches = _eval(tokens, raw, targets_length)
  assert len(batches) == 2 and all(b["inputs"].shape == (8, 64) for b in batches)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  real = rows["target_weights"].sum(axis=1) > 0
  assert real.tolist() == [True] * 12 + [False] * 4
  assert not rows["inputs_mask"][~real].any() and not rows["target_weights"][~real].any()
  rebuilt = [_uncorrupt(i[m.astype(bool)], t[w > 0])
             for i, m, t, w in zip(rows["inputs"], rows["inputs_mask"], rows["targets"],
                                   rows["target_weights"]) if w.any()]
  np.testing.assert_array_equal(np.concatenate(rebuilt), tokens)
  again = _eval(tokens, raw, targets_length)
  for a, b in zip(batches, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def _one_line_error(fn, match):
  with pytest.raises(UserError, match=match) as e:
    fn()
  assert "\n" not in str(e.value)


def test_errors_are_one_clear_line():
  _one_line_error(lambda: sc.span_corrupt(_tokens(100), np.random.default_rng(0), **KW,
                                          sentinel_ids=SENTINELS[:2], eos_id=EOS),
                  r"5 noise spans but only 2 sentinel ids")
  _one_line_error(lambda: sc.raw_length_for(2, **KW), r"inputs_length 2 is too short")
  _, _, fn = _transform(64)
  _one_line_error(lambda: fn({"tokens": _tokens(200)}, np.random.default_rng(0)),
                  r"raw_length_for")
  _one_line_error(lambda: sc.split_lengths(100, noise_density=1.0, mean_span=3),
                  r"noise_density")


# --- documents of a corpus: concatenated windows, or each document's windows packed ----------

ROWS_KW = dict(noise_density=0.15, mean_span=3.0, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD)


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [{"tokens": rng.integers(0, 800, n).astype(np.int32)} for n in lengths]


class _Folder(list):
  """Documents as a prepared folder offers them (`token_shards.TokenShards`' interface)."""

  @property
  def num_documents(self):
    return len(self)

  @property
  def num_tokens(self):
    return sum(len(d["tokens"]) for d in self)


def _corpus_rows(folders, packing, batch=4, seed=0, inputs_length=32, weights=None):
  folders = [_Folder(f) for f in folders]
  raw, targets_length = sc.raw_length_for(inputs_length, 0.15, 3.0)
  docs = corpus.host_documents(folders, weights or [1.0] * len(folders), seed)
  return sc.corpus_rows(docs, packing=packing, raw_length=raw, global_batch=batch, seed=seed,
                        offset=2, num_bins=8, mixture=len(folders) > 1,
                        inputs_length=inputs_length, targets_length=targets_length,
                        **ROWS_KW), raw


def test_first_fit_rows_hold_each_documents_windows_corrupted_alone():
  """Every segment of a packed row is one window of one document (ids shifted by 2),
  corrupted on its own; the decoder reads each example's targets shifted right from pad."""
  docs = _documents([3, 9, 40, 17, 5, 26, 2, 61])
  texts = {tuple(d["tokens"] + 2) for d in docs}
  it, raw = _corpus_rows([docs], "first_fit")
  batch = next(it)
  assert batch["inputs"].shape == (4, 32) and batch["targets_segment_ids"].shape[0] == 4
  segments = 0
  for r in range(4):
    seg_in, seg_t = batch["inputs_segment_ids"][r], batch["targets_segment_ids"][r]
    assert set(seg_in[seg_in > 0]) == set(seg_t[seg_t > 0])
    for k in set(seg_in[seg_in > 0]):
      x, y = batch["inputs"][r][seg_in == k], batch["targets"][r][seg_t == k]
      window = tuple(_uncorrupt(x, y))
      assert 2 <= len(window) <= raw
      # A window of some document (one of its consecutive raw_length pieces).
      assert any(window == t[i:i + raw] for t in texts for i in range(0, len(t), raw)), window
      d = batch["decoder_inputs"][r][seg_t == k]
      assert d[0] == PAD and list(d[1:]) == list(y[:-1])
    np.testing.assert_array_equal(batch["inputs_mask"][r], seg_in > 0)
    np.testing.assert_array_equal(batch["target_weights"][r], seg_t > 0)
    segments = max(segments, int(seg_in.max()))
  assert segments >= 2  # rows hold several examples


def test_concat_rows_are_full_windows_across_documents():
  docs = _documents([3, 9, 40, 17, 5, 26, 2, 61])
  it, raw = _corpus_rows([docs], "concat")
  batch = next(it)
  # Every row is a full raw window: no padding in the inputs, and no segment ids.
  assert batch["inputs_mask"].all() and "inputs_segment_ids" not in batch
  window = _uncorrupt(batch["inputs"][0], batch["targets"][0][batch["target_weights"][0] > 0])
  assert len(window) == raw


@pytest.mark.parametrize("packing", ["first_fit", "concat"])
def test_corpus_rows_resume_from_the_iterators_state(packing):
  docs = _documents([3, 9, 40, 17, 5, 26, 2, 61, 11, 30])
  it, _ = _corpus_rows([docs], packing, seed=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  fresh, _ = _corpus_rows([docs], packing, seed=3)
  fresh.set_state(state)
  for a in want:
    b = next(fresh)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_corpus_rows_reject_an_unknown_packing():
  with pytest.raises(UserError, match="unknown data.packing 'bins'"):
    _corpus_rows([_documents([10])], "bins")


@pytest.mark.parametrize("packing", ["first_fit", "concat"])
def test_a_mixtures_rows_say_which_folder_each_raw_token_came_from(packing):
  """Two folders at 3:1 of the tokens (ids below and above 400): in every row, `raw_source`
  counts exactly the raw tokens of each folder that its inputs and targets hold, and over
  many rows the shares approach the weights."""
  a = [{"tokens": d["tokens"] % 400} for d in _documents([20, 35, 12, 50, 28] * 4, seed=1)]
  b = [{"tokens": d["tokens"] % 400 + 400} for d in _documents([15, 40, 22] * 4, seed=2)]
  it, _ = _corpus_rows([a, b], packing, batch=8, weights=[3.0, 1.0])
  counts = np.zeros(3)
  for _ in range(40):
    batch = next(it)
    for r in range(8):
      tokens = np.concatenate([batch["inputs"][r], batch["targets"][r]])
      raw = tokens[(tokens >= 2) & (tokens < min(SENTINELS))] - 2  # the offset of 2
      src = batch["raw_source"][r]
      assert (src == 1).sum() == (raw < 400).sum() and (src == 2).sum() == (raw >= 400).sum()
      counts += np.bincount(src, minlength=3)
  share = counts[1] / counts[1:].sum()
  assert 0.65 < share < 0.85, share
