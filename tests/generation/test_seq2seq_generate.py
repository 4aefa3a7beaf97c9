"""Encoder–decoder generation: cached greedy = uncached argmax, exact beam search, batching."""

from __future__ import annotations

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
    _FORWARDS[id(model)] = (model, jax.jit(
        lambda p, x, y: model.apply({"params": p}, x, y)["logits"][0]))
  forward = _FORWARDS[id(model)][1]
  decoder_ids = np.full((1, PREFIX_WIDTH), PAD, np.int32)
  decoder_ids[0, :len(prefix) + 1] = [PAD] + prefix
  logits = forward(params, jnp.asarray([inputs]), decoder_ids)[len(prefix)]
  return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))


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
