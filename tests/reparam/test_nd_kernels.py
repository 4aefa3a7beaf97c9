"""N-D kernels (stock `nn.MultiHeadDotProductAttention`, `nn.DenseGeneral`) as matrices.

The model is made of stock `flax.linen` layers only.  A matrix transform on an
N-D kernel must give what the same transform gives on the explicitly reshaped
`[prod(in), prod(out)]` matrix, reshaped back (reparam/matrix.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from reparam_jax.errors import UserError
from reparam_jax.reparam import Reparam, materialize
from reparam_jax.reparam.rules import Plan, path_key, spec_in_axes
from reparam_jax.reparam.rules import parse_spec as parse_node

VOCAB, EMBED, HEADS, HEAD_DIM = 11, 16, 2, 4
IDS = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % VOCAB
ATTN = "MultiHeadDotProductAttention_0"
# N-D kernel path -> how many leading axes are the input (the layer's contraction).
ND_KERNELS = {f"{ATTN}/query/kernel": 1, f"{ATTN}/key/kernel": 1, f"{ATTN}/value/kernel": 1,
              f"{ATTN}/out/kernel": 2, "DenseGeneral_0/kernel": 1}


class StockModel(nn.Module):
  """Stock layers only: attention kernels [embed, heads, head_dim] / [heads, head_dim, embed],
  a DenseGeneral with two output axes, a plain Dense."""

  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(VOCAB, EMBED)(ids)
    h = h + nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM)(h)
    h = nn.LayerNorm()(h)
    h = nn.gelu(nn.DenseGeneral((HEADS, HEAD_DIM))(h))
    return nn.Dense(VOCAB)(h.reshape(h.shape[:-2] + (HEADS * HEAD_DIM,)))


def with_in_axes(spec: str, k: int) -> str:
  """`spec` with `in_axes=k` written on its first stage."""
  first, *rest = spec.split("|")
  first = f"{first[:-1]}, in_axes={k})" if first.endswith(")") else f"{first}(in_axes={k})"
  return "|".join([first, *rest])


def nd_rules(spec: str, frozen_rest: bool = False) -> dict:
  rules = [(r".*(query|key|value)/kernel", with_in_axes(spec, 1)),
           (r".*/out/kernel", with_in_axes(spec, 2)),
           (r"DenseGeneral_0/kernel", with_in_axes(spec, 1))]
  return {"rules": tuple(rules + [(".*", "frozen")] * frozen_rest)}


def get(tree, path):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def dense_params():
  return StockModel().init(jax.random.key(0), IDS)["params"]


def forward(params):
  return StockModel().apply({"params": params}, IDS)


# Specs whose θ from a dense weight represents it exactly (the LoRA family: B = 0,
# and the exact round trips); the lossy ones are compared by their error instead.
EXACT = ("lora(rank=2)", "lora(rank=2)|magnitude", "vera(rank=2)", "ia3", "ia3(side=input)",
         "spherical")
LOSSY = ("lowrank(rank=2)", "quant(bits=4)", "q4(block_size=4)")


def perturbed(theta, key):
  """θ with noise on every float leaf: a state away from the start (B ≠ 0, ...)."""
  leaves, tree = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  return tree.unflatten([
      x + 0.1 * jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("spec", EXACT + LOSSY)
def test_nd_equals_the_transform_on_the_reshaped_matrix(spec):
  """(b) θ, and the weight from any θ, are the 2-D transform's on the reshaped matrix."""
  dense = dense_params()
  rp = Reparam.from_config(nd_rules(spec))
  key = jax.random.key(3)
  theta = rp.from_dense(dense, key)
  node = parse_node(spec)
  # A copy in which every N-D kernel's matrix θ is moved off its start, the same for both.
  moved = jax.tree.map(lambda x: x, theta)
  for i, (path, k) in enumerate(ND_KERNELS.items()):
    w = get(dense, path)
    matrix = w.reshape(int(np.prod(w.shape[:k])), -1)
    want = node.from_dense(matrix, path_key(key, path))
    got = get(theta, path)
    assert got["layout"].shape == w.shape[:k] + (0,) + w.shape[k:]
    jax.tree.map(np.testing.assert_array_equal, got["matrix"], want)
    module, name = path.rsplit("/", 1)
    get(moved, module)[name] = {**got, "matrix": perturbed(got["matrix"], jax.random.key(i))}
  merged = rp.to_dense(moved)
  for path in ND_KERNELS:
    want = materialize(node.apply(get(moved, path)["matrix"])).reshape(get(dense, path).shape)
    np.testing.assert_array_equal(get(merged, path), want)


@pytest.mark.parametrize("spec", EXACT)
def test_exact_transforms_start_at_the_dense_model(spec):
  """(a) LoRA-family adapters start at zero and the round trips are exact: same forward."""
  dense = dense_params()
  rp = Reparam.from_config(nd_rules(spec))
  theta = rp.from_dense(dense, jax.random.key(1))
  wrapped = rp.wrap(StockModel())
  np.testing.assert_allclose(wrapped.apply({"params": theta}, IDS), forward(dense),
                             rtol=1e-5, atol=1e-5)
  # From scratch (the wrapped model's own init): the forward is the dense one of its weights.
  v = wrapped.init(jax.random.key(2), IDS)
  np.testing.assert_allclose(wrapped.apply(v, IDS), forward(rp.to_dense(v["params"])),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", LOSSY)
def test_lossy_transforms_lose_what_the_2d_transform_loses(spec):
  """(a) The reconstruction error of each N-D kernel is the 2-D case's, and not zero."""
  dense = dense_params()
  rp = Reparam.from_config(nd_rules(spec))
  approx = rp.to_dense(rp.from_dense(dense, jax.random.key(1)))
  node = parse_node(spec)
  for path, k in ND_KERNELS.items():
    w = get(dense, path)
    matrix = w.reshape(int(np.prod(w.shape[:k])), -1)
    lost_2d = matrix - materialize(node.apply(node.from_dense(matrix, path_key(
        jax.random.key(1), path))))
    lost_nd = w - get(approx, path)
    assert float(jnp.abs(lost_nd).max()) > 0
    np.testing.assert_array_equal(lost_nd.reshape(lost_2d.shape), lost_2d)


def _loss(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], IDS[:, 1:]).mean()


def test_lora_trains_only_the_adapters_and_merges_to_nd_kernels():
  """(c) A few steps of LoRA on the stock model lower the loss and move only A and B;
  (d) the merged (dense) params have the N-D shapes and compute the same forward."""
  rp = Reparam.from_config(nd_rules("lora(rank=2, alpha=4)", frozen_rest=True))
  model = rp.wrap(StockModel())
  params = model.init(jax.random.key(0), IDS)["params"]
  labels = jax.tree.map(lambda t: "train" if t else "freeze", rp.trainable_mask(params))
  tx = optax.multi_transform({"train": optax.adam(3e-2), "freeze": optax.set_to_zero()}, labels)

  def loss_fn(p):
    return _loss(model.apply({"params": p}, IDS))

  @jax.jit
  def step(p, opt):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt, start = tx.init(params), params
  losses = []
  for _ in range(8):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.05, losses

  moved = {p for p, a, b in zip(_paths(start), jax.tree.leaves(start), jax.tree.leaves(params))
           if not np.array_equal(a, b)}
  want = {f"{path}/matrix/lora_{x}" for path in ND_KERNELS for x in "ab"}
  # A gets no gradient while B = 0 (step 1); after that both factors move.
  assert moved == want, sorted(moved ^ want)

  merged = rp.to_dense(params)
  assert jax.tree.map(jnp.shape, merged) == jax.tree.map(jnp.shape, dense_params())
  np.testing.assert_allclose(forward(merged), model.apply({"params": params}, IDS),
                             rtol=1e-5, atol=1e-5)
  theta = get(params, f"{ATTN}/out/kernel")["matrix"]
  delta = (2.0 * theta["lora_a"] @ theta["lora_b"]).reshape(HEADS, HEAD_DIM, EMBED)
  np.testing.assert_allclose(get(merged, f"{ATTN}/out/kernel"), theta["base"].reshape(
      HEADS, HEAD_DIM, EMBED) + delta, rtol=1e-6, atol=1e-6)


def _paths(tree):
  return ["/".join(str(k.key) for k in kp) for kp, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_missing_in_axes_is_a_one_line_error():
  """(e) [embed, heads, head_dim] and [heads, head_dim, embed] are ambiguous: no guess."""
  rp = Reparam.from_config({"rules": ((r".*/kernel", "lora(rank=2)"),)})
  with pytest.raises(UserError) as err:
    rp.wrap(StockModel()).init(jax.random.key(0), IDS)
  msg = str(err.value)
  assert "\n" not in msg
  assert msg.startswith("DenseGeneral_0/kernel: ") and "(16, 2, 4)" in msg and "in_axes=K" in msg


@pytest.mark.parametrize("spec, problem", [
    ("lora(rank=2, in_axes=3)", "1 <= in_axes <= 2"),
    ("lora(rank=2, in_axes=0)", "positive integer"),
    ("lora(rank=2, in_axes=1)|magnitude(in_axes=1)", "write it once"),
])
def test_bad_in_axes_is_a_one_line_error(spec, problem):
  with pytest.raises(UserError, match=problem) as err:
    Reparam.from_config({"rules": ((r".*/query/kernel", spec),)}).wrap(StockModel()).init(
        jax.random.key(0), IDS)
  assert "\n" not in str(err.value)


def test_in_axes_on_any_stage_and_2d_kernels_stay_plain():
  """`in_axes` is the spec's option, on any stage; a 2-D kernel is never viewed, so its θ
  and values are those of the rule without `in_axes`, and transforms that act on any
  shape keep acting on the N-D array when the rule gives no `in_axes`."""
  assert spec_in_axes("lora(rank=2)|magnitude(in_axes=2)") == 2
  assert spec_in_axes("lora(rank=2)") is None
  dense = dense_params()
  key = jax.random.key(4)
  plain = Reparam.from_config({"rules": ((r"Dense_0/kernel", "lora(rank=2)"),)})
  viewed = Reparam.from_config({"rules": ((r"Dense_0/kernel", "lora(rank=2, in_axes=1)"),)})
  a, b = plain.from_dense(dense, key), viewed.from_dense(dense, key)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  native = Reparam.from_config({"rules": ((r".*/query/kernel", "spherical"),)})
  theta = get(native.from_dense(dense), f"{ATTN}/query/kernel")
  assert set(theta) == {"radius", "angles"} and theta["angles"].shape == (EMBED - 1, 2, 4)


class LogicalModel(nn.Module):
  """Attention-style DenseGenerals whose kernels carry logical-axis names."""

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal()
    h = nn.DenseGeneral((HEADS, HEAD_DIM), name="qkv", kernel_init=nn.with_logical_partitioning(
        init, ("embed", "heads", "kv")))(x)
    return nn.DenseGeneral(EMBED, axis=(-2, -1), name="proj",
                           kernel_init=nn.with_logical_partitioning(
                               init, ("heads", "kv", "embed")))(h)


def test_logical_axis_names_give_in_axes():
  """Boxed kernels: the split between head axes and the others is the contraction, so a
  rule without `in_axes` works and equals the rule with it; θ keeps logical names."""
  x = jax.random.normal(jax.random.key(0), (2, 3, EMBED))
  model = LogicalModel()
  dense = model.init(jax.random.key(1), x)["params"]
  by_names = Reparam.from_config({"rules": ((r".*/kernel", "lora(rank=2)"),)})
  by_rule = Reparam.from_config({"rules": ((r"qkv/kernel", "lora(rank=2, in_axes=1)"),
                                           (r"proj/kernel", "lora(rank=2, in_axes=2)"))})
  key = jax.random.key(2)
  theta = by_names.from_dense(dense, key)
  jax.tree.map(np.testing.assert_array_equal, meta.unbox(theta),
               meta.unbox(by_rule.from_dense(meta.unbox(dense), key)))
  names = jax.tree.map(lambda b: getattr(b, "names", None), theta,
                       is_leaf=lambda b: isinstance(b, nn.Partitioned))
  assert names["qkv"]["kernel"]["matrix"] == {
      "base": ("embed", "heads"), "lora_a": ("embed", None), "lora_b": (None, "heads")}
  assert names["proj"]["kernel"]["matrix"]["lora_a"] == ("heads", None)
  assert names["proj"]["kernel"]["layout"] == (None,) * 4
  v = by_names.wrap(model).init(jax.random.key(1), x)
  np.testing.assert_allclose(by_names.wrap(model).apply(v, x),
                             model.apply({"params": by_names.to_dense(v["params"])}, x),
                             rtol=1e-6, atol=1e-6)


def test_unhelpful_logical_names_still_ask_for_in_axes():
  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral((2, 4), kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("embed", "mlp", "act")))(x)
  with pytest.raises(UserError, match="in_axes=K"):
    Reparam.from_config({"rules": ((r".*/kernel", "lora(rank=2)"),)}).wrap(Mlp()).init(
        jax.random.key(0), jnp.ones((1, EMBED)))


def test_plan_keeps_in_axes_out_of_the_stage():
  rule = Plan.from_config({"rules": ((".*", "lora(rank=2, in_axes=2)|magnitude"),)}).rules[0]
  assert rule.in_axes == 2 and rule.node.outer.name == "magnitude"
