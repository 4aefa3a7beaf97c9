"""The cached decoder: same tokens as the no-cache path, independent of batching, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.generation import decode
from reparam_jax.models import Transformer, transformer_config

VOCAB = 50


def tiny(**overrides) -> Transformer:
  # Untied output layer: with tied embeddings a tiny random model mostly repeats its
  # last token, which would make the comparisons below weak.
  cfg = dict(vocab_size=VOCAB, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=40,
             causal=True, tie_embeddings=False)
  cfg.update(overrides)
  return Transformer(transformer_config(cfg))


def init(model: Transformer, seed: int = 0):
  params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  # Larger weights than the init: the logits then have clear winners, so argmax
  # comparisons are not decided by float noise.
  return jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)


def greedy_without_cache(model, params, prompt, n):
  """The reference: a full forward over the whole sequence for every new token.

  Every forward has the final length, the sequence right-padded: under the causal mask
  no position sees the padding after it, and one shape compiles once (op by op, the
  forwards of one test took a minute)."""
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x)["logits"][0])
  ids = list(prompt)
  x_1xL = np.zeros((1, len(prompt) + n), np.int32)
  for _ in range(n):
    x_1xL[0, :len(ids)] = ids
    ids.append(int(np.argmax(forward(params, x_1xL)[len(ids) - 1])))
  return ids[len(prompt):]


PROMPTS = [[3, 14, 15, 9, 2, 6], [5], [35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 2]]


@pytest.mark.parametrize("overrides", [{}, {"rope": True}, {"pre_norm": False}])
def test_greedy_with_the_cache_is_the_argmax_of_full_forwards(overrides):
  model = tiny(**overrides)
  params = init(model)
  out = decode.generate(model, params, PROMPTS, 12, decode.Sampling(temperature=0.0))
  for row, prompt in enumerate(PROMPTS):
    assert out.tokens[row].tolist() == greedy_without_cache(model, params, prompt, 12)
  assert out.lengths.tolist() == [12, 12, 12]
  assert min(len(set(row)) for row in out.tokens.tolist()) >= 3  # not one repeated token


def test_a_rows_output_does_not_depend_on_its_batch():
  model = tiny()
  params = init(model, seed=1)
  sampling = decode.Sampling(temperature=0.0)
  together = decode.generate(model, params, PROMPTS, 10, sampling).tokens
  for row, prompt in enumerate(PROMPTS):
    alone = decode.generate(model, params, [prompt], 10, sampling).tokens
    np.testing.assert_array_equal(together[row], alone[0])


def test_stop_tokens_end_a_row_and_pad_the_rest():
  model = tiny()
  params = init(model)
  free = decode.generate(model, params, PROMPTS, 12, decode.Sampling(temperature=0.0))
  stop = int(free.tokens[0, 3])  # row 0's fourth token
  out = decode.generate(model, params, PROMPTS, 12, decode.Sampling(temperature=0.0),
                        stop_tokens=[stop], pad_id=0)
  first = free.tokens[0].tolist().index(stop)
  assert out.lengths[0] == first + 1
  assert out.tokens[0, :first + 1].tolist() == free.tokens[0, :first + 1].tolist()
  assert (out.tokens[0, first + 1:] == 0).all()


def test_sampling_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = [jax.random.key(i) for i in range(300)]
  seen = lambda s: {int(decode.choose(logits, s, k)[0]) for k in keys}  # noqa: E731
  assert seen(decode.Sampling(temperature=1.0, top_k=2)) == {0, 1}
  assert seen(decode.Sampling(temperature=1.0, top_p=0.6)) == {0, 1}  # 0.5 < 0.6 ≤ 0.8
  assert seen(decode.Sampling(temperature=1.0, top_p=0.5)) == {0}
  assert seen(decode.Sampling(temperature=1.0)) == {0, 1, 2, 3}
  assert seen(decode.Sampling(temperature=0.0)) == {0}


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[list(range(1, 41))]), "40 tokens leaves no room in the model's context of 40"),
    (dict(sampling=decode.Sampling(top_p=0.0)), r"top_p=0.0 is outside \(0, 1\]"),
    (dict(sampling=decode.Sampling(top_p=1.5)), "top_p=1.5 is outside"),
    (dict(sampling=decode.Sampling(temperature=-1.0)), "temperature=-1.0 is negative"),
    (dict(prompts=[[VOCAB]]), "outside the vocabulary"),
])
def test_bad_requests_are_one_line_errors(kwargs, message):
  model = tiny()
  request = dict(prompts=[[1, 2]], sampling=decode.Sampling())
  request.update(kwargs)
  with pytest.raises(UserError, match=message):
    decode.generate(model, None, request["prompts"], 8, request["sampling"])


def test_an_encoder_does_not_generate():
  with pytest.raises(UserError, match="not a decoder"):
    decode.generate(tiny(causal=False), None, [[1]], 4)


def test_shared_layers_would_share_a_cache():
  with pytest.raises(UserError, match="share_layers=True is not supported yet"):
    decode.generate(tiny(share_layers=True), None, [[1]], 4)


def greedy_in_windows_without_cache(model, params, prompt, n):
  """The reference for decoding past the context: full forwards, the window restarting from
  the last half context whenever the context is full."""
  context, keep = model.cfg.max_len, model.cfg.max_len // 2
  new = greedy_without_cache(model, params, prompt, min(n, context - len(prompt)))
  while len(new) < n:
    base = (list(prompt) + new)[-keep:]
    new += greedy_without_cache(model, params, base, min(n - len(new), context - keep))
  return new


def test_decoding_past_the_context_restarts_from_the_last_half_context():
  model = tiny()
  params = init(model)
  out = decode.generate(model, params, PROMPTS[:2], 75, decode.Sampling(temperature=0.0))
  assert out.tokens.shape == (2, 75) and out.lengths.tolist() == [75, 75]
  for row, prompt in enumerate(PROMPTS[:2]):
    assert out.tokens[row].tolist() == greedy_in_windows_without_cache(model, params, prompt, 75)


def test_a_reparameterized_model_decodes_from_its_effective_weights_once():
  from reparam_jax.reparam import Reparam

  model = tiny()
  reparam = {"rules": ((r"block_\d+/attn/(query|value)/kernel", "lora(rank=2, alpha=4)"),
                       (r"block_\d+/mlp/fc_in/kernel", "lowrank(rank=4)"),
                       (r"block_\d+/mlp/fc_out/kernel", "quant(bits=8)"))}
  wrapped = Reparam.from_config(reparam).wrap(model)
  theta = wrapped.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))["params"]
  theta = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, theta)
  dense = decode.decoding_params(theta, reparam)
  assert set(dense["block_0"]["mlp"]["fc_in"]) == {"kernel", "bias"}
  assert dense["block_0"]["mlp"]["fc_in"]["kernel"].shape == (16, 32)
  out = decode.generate(model, dense, PROMPTS, 10, decode.Sampling(temperature=0.0))
  for row, prompt in enumerate(PROMPTS):
    assert out.tokens[row].tolist() == greedy_without_cache(wrapped, theta, prompt, 10)


def test_sharded_over_data_fsdp_and_tensor_gives_the_same_tokens():
  import flax.linen as nn

  from reparam_jax.config.base import DEFAULT_AXIS_RULES
  from reparam_jax.training import sharding

  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (CPU) devices")
  model = tiny()
  prompts = PROMPTS + [[7, 7, 1]]
  sampling = decode.Sampling(temperature=0.0)
  expected = decode.generate(model, init(model), prompts, 10, sampling).tokens
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.rules_tuple(DEFAULT_AXIS_RULES)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  shardings = sharding.logical_to_sharding(boxed["params"], mesh, rules)
  params = jax.device_put(nn.meta.unbox(init(model)), shardings)
  assert tuple(params["block_0"]["mlp"]["fc_in"]["kernel"].sharding.spec) == ("fsdp", "tensor")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = decode.generate(model, params, prompts, 10, sampling).tokens
  np.testing.assert_array_equal(got, expected)
