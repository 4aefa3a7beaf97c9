"""Encoder–decoder generation: cached greedy = uncached argmax, exact beam search, batching."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.generation.decode import Sampling
from reparam_jax.generation.seq2seq import Beam, generate
from reparam_jax.models import PRESETS, TransformerConfig
from reparam_jax.models.seq2seq import EncoderDecoder

PAD, EOS = 0, 1


@functools.lru_cache(maxsize=4)  # model and params are immutable: tests share them
def _model(vocab: int = 40, spread: float = 4.0, **kw) -> tuple[EncoderDecoder, dict]:
  cfg = dict(PRESETS["t5_v1_1_small"], vocab_size=vocab, max_len=32, num_layers=2, num_heads=2,
             embed_dim=16, mlp_dim=32, head_size=8, relative_buckets=8, relative_max_distance=16)
  model = EncoderDecoder(TransformerConfig(**dict(cfg, **kw)))
  params = model.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32),
                      jnp.zeros((1, 4), jnp.int32))["params"]
  # Spread the logits so that EOS and ties are neither certain nor impossible.
  params = jax.tree.map(lambda x: x * spread if x.ndim == 2 else x, params)
  return model, params


_FORWARDS: dict[int, tuple] = {}  # id(model) → (model, its compiled forward)
PREFIX_WIDTH = 16  # decoder inputs are right-padded to this: one shape, one compile


def _logp(model, params, inputs, prefix):
  """log p(next token | inputs, prefix) from a full forward (no cache).  The decoder input
  is right-padded: under its causal mask no position sees the padding after it."""
  if _FORWARDS.get(id(model), (None,))[0] is not model:
    _FORWARDS[id(model)] = (model, jax.jit(lambda p, x, y: jax.nn.log_softmax(
        model.apply({"params": p}, x, y)["logits"][0].astype(jnp.float32))))
  forward = _FORWARDS[id(model)][1]
  decoder_ids = np.full((1, PREFIX_WIDTH), PAD, np.int32)
  decoder_ids[0, :len(prefix) + 1] = [PAD] + prefix
  return np.asarray(forward(params, np.asarray([inputs], np.int32), decoder_ids))[len(prefix)]


def test_greedy_equals_uncached_argmax():
  model, params = _model()
  inputs = [[5, 9, 12, 3, 7], [8, 2, 30]]
  got = generate(model, params, inputs, 10, start_id=PAD, eos_id=EOS)
  for row, src in enumerate(inputs):
    prefix = []
    while len(prefix) < 10 and (not prefix or prefix[-1] != EOS):
      prefix.append(int(np.argmax(_logp(model, params, src, prefix))))
    assert got.tokens[row, :got.lengths[row]].tolist() == prefix
    assert (got.tokens[row, got.lengths[row]:] == PAD).all()


def test_beam_search_with_enough_beams_is_exhaustive_search():
  vocab, steps = 5, 3
  model, params = _model(vocab=vocab, spread=1.0)
  src = [2, 3, 4, 2]
  best, best_score = None, -np.inf
  for length in range(1, steps + 1):
    for seq in itertools.product(range(vocab), repeat=length):
      if EOS in seq[:-1] or (length < steps and seq[-1] != EOS):
        continue  # a hypothesis ends at its first EOS or at the length limit
      score = sum(_logp(model, params, src, list(seq[:i]))[t] for i, t in enumerate(seq))
      if score > best_score:
        best, best_score = list(seq), score
  got = generate(model, params, [src], steps, start_id=PAD, eos_id=EOS,
                 beam=Beam(size=vocab ** 2, length_penalty=0.0))
  assert got.tokens[0, :got.lengths[0]].tolist() == best
  greedy = generate(model, params, [src], steps, start_id=PAD, eos_id=EOS)
  assert greedy.tokens[0, :greedy.lengths[0]].tolist() != best  # the case is not trivial


def test_beam_search_beats_or_ties_greedy_and_rows_are_independent():
  model, params = _model()
  inputs = [[5, 9, 12, 3, 7], [8, 2, 30], [4, 4, 4, 4, 4, 4, 4, 4, 4]]
  beam = Beam(size=4, length_penalty=0.0)
  together = generate(model, params, inputs, 8, start_id=PAD, eos_id=EOS, beam=beam)
  greedy = generate(model, params, inputs, 8, start_id=PAD, eos_id=EOS)

  def score(src, seq):
    return sum(_logp(model, params, src, list(seq[:i]))[t] for i, t in enumerate(seq))

  for row, src in enumerate(inputs):
    alone = generate(model, params, [src], 8, start_id=PAD, eos_id=EOS, beam=beam)
    np.testing.assert_array_equal(alone.tokens[0], together.tokens[row])
    b = together.tokens[row, :together.lengths[row]].tolist()
    g = greedy.tokens[row, :greedy.lengths[row]].tolist()
    if g[-1] == EOS or len(g) == 8:  # greedy's output is a complete hypothesis
      assert score(src, b) >= score(src, g) - 1e-4


def _reference_beam_search(logp, K: int, steps: int, alpha: float, early_stopping) -> list[int]:
  """transformers' beam search (`_beam_search` of transformers 5) for one input, in plain
  Python: `logp(prefix)` gives log p(next token | prefix)."""
  live = [((), 0.0)]  # (tokens, Σ log p), best first
  finished = []  # (Σ log p / length^alpha, tokens), the best K
  for length in range(1, steps + 1):
    candidates = sorted(((score + float(lp), seq + (token,)) for seq, score in live
                         for token, lp in enumerate(logp(list(seq)))), reverse=True)[:2 * K]
    ends = [seq[-1] == EOS or length == steps for _, seq in candidates]
    # Only the best K candidates may finish; the other K are there to keep K beams live.
    finished += [(score / length ** alpha, seq)
                 for (score, seq), end in list(zip(candidates, ends))[:K] if end]
    finished = sorted(finished, reverse=True)[:K]
    live = [(seq, score) for (score, seq), end in zip(candidates, ends) if not end][:K]
    if length == steps:
      break
    if len(finished) == K:
      if early_stopping is True:
        break
      # No live beam can beat the worst finished: its bound is its score at the current
      # length (False), or at the longest for "never" when longer outputs score higher.
      bound = steps if early_stopping == "never" and alpha > 0 else length
      if live[0][1] / bound ** alpha <= finished[-1][0]:
        break
  return list(finished[0][1])


def test_beam_search_length_penalty_and_stopping_rules_equal_transformers_rule():
  """Nonzero length penalties under each `early_stopping` rule, against the reference above."""
  model, params = _model()
  K, steps = 3, 7
  # Found by a search over 120 random inputs: on the first two only the best K candidates
  # finishing matters, on the last two "never" and False disagree (α = 1); one length, one
  # compile of the reference's forward.
  inputs = [[34, 26, 21, 12, 13, 3], [4, 2, 8, 32, 26, 36], [33, 28, 28, 16, 35, 7],
            [21, 3, 37, 29, 13, 2], [32, 22, 11, 32, 21, 39]]
  memo = {}

  def logp_of(src):
    def logp(prefix):
      key = (tuple(src), tuple(prefix))
      if key not in memo:
        memo[key] = _logp(model, params, src, prefix)
      return memo[key]
    return logp

  outputs = {}
  for alpha in (0.6, 1.0, 2.0, -0.5):
    for early_stopping in (False, True, "never"):
      got = generate(model, params, inputs, steps, start_id=PAD, eos_id=EOS,
                     beam=Beam(K, alpha, early_stopping))
      rows = [got.tokens[row, :got.lengths[row]].tolist() for row in range(len(inputs))]
      for row, src in enumerate(inputs):
        expected = _reference_beam_search(logp_of(src), K, steps, alpha, early_stopping)
        assert rows[row] == expected, f"alpha={alpha}, early_stopping={early_stopping!r}, {row}"
      outputs[alpha, early_stopping] = rows
  # The rules and penalties disagree on these inputs, so a mix-up would show.
  assert outputs[1.0, False] != outputs[1.0, "never"]
  assert outputs[1.0, False] != outputs[1.0, True]
  assert outputs[0.6, False] != outputs[2.0, False]


def test_sample_command_passes_early_stopping(monkeypatch):
  from reparam_jax import sample
  calls = []
  monkeypatch.setattr(sample, "sample_run", lambda *args: calls.append(args) or [])
  for flag, value in (("false", False), ("true", True), ("never", "never")):
    sample.main(["--workdir=unused", "--prompt=x", "--beams=2", f"--early_stopping={flag}"])
    assert type(calls[-1][-1]) is type(value) and calls[-1][-1] == value
  sample.main(["--workdir=unused", "--prompt=x", "--beams=2"])
  assert calls[-1][-1] is False  # transformers' default


def test_sampling_is_seeded():
  model, params = _model()
  kw = dict(start_id=PAD, eos_id=EOS, sampling=Sampling(temperature=1.0, top_k=10))
  a = generate(model, params, [[3, 4, 5]], 12, rng=jax.random.key(1), **kw)
  b = generate(model, params, [[3, 4, 5]], 12, rng=jax.random.key(1), **kw)
  c = generate(model, params, [[3, 4, 5]], 12, rng=jax.random.key(2), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("inputs, kwargs, message", [
    ([], {}, "no inputs"),
    ([[3], []], {}, "input 1 is empty"),
    ([[3, 99]], {}, "outside the vocabulary"),
    ([[3]], {"beam": Beam(size=0)}, "beams=0"),
    ([[3]], {"beam": Beam(size=2, early_stopping="sometimes")}, "early_stopping='sometimes'"),
    ([[3]], {"beam": Beam(size=2, length_penalty=float("nan"))}, "length_penalty=nan"),
    ([[3]], {"sampling": Sampling(top_p=0.0)}, "top_p"),
])
def test_bad_requests_are_one_line_errors(inputs, kwargs, message):
  model, params = _model()
  with pytest.raises(UserError, match=message):
    generate(model, params, inputs, 4, start_id=PAD, eos_id=EOS, **kwargs)


def test_sharded_over_data_fsdp_and_tensor_gives_the_same_tokens():
  import flax.linen as nn

  from reparam_jax.config.base import DEFAULT_AXIS_RULES
  from reparam_jax.training import sharding

  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (CPU) devices")
  model, params = _model()
  inputs = [[5, 9, 12, 3, 7], [8, 2, 30], [4, 4, 4], [6, 1, 9, 9]]
  beam = Beam(size=2, length_penalty=0.0)
  expected = generate(model, params, inputs, 6, start_id=PAD, eos_id=EOS, beam=beam).tokens
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.rules_tuple(DEFAULT_AXIS_RULES)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                            jnp.zeros((1, 4), jnp.int32)))
  shardings = sharding.logical_to_sharding(boxed["params"], mesh, rules)
  params = jax.device_put(nn.meta.unbox(params), shardings)
  cross = params["decoder"]["block_0"]["cross_attn"]["query"]["kernel"]
  assert tuple(cross.sharding.spec) == ("fsdp", "tensor")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = generate(model, params, inputs, 6, start_id=PAD, eos_id=EOS, beam=beam).tokens
  np.testing.assert_array_equal(got, expected)
