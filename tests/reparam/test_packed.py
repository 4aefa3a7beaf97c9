"""`packed` (group-grid codes, 2/3/4/8 bits a code) and `sparse24` (2:4 stored compressed):
bit layout, exact forward against the method's grid, RTN equivalence, `packed|lora`,
one-line errors, and the bytes of real orbax checkpoints.

References are numpy here: the grid's own `GroupGrid.dequantize()`, the masked dense
weight, and the byte layout written out bit by bit.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.compression import methods
from reparam_jax.errors import UserError
from reparam_jax.reparam import materialize
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms import packed, q4


def _w(shape, seed=0):
  return np.array(jax.random.normal(jax.random.key(seed), shape, jnp.float32))


# --- bit layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip_is_exact_and_the_layout_is_little_endian(bits):
  rows, nbytes = packed.chunk(bits)
  d_in, d_out = 3 * rows, 7  # odd chunk count and d_out
  codes = np.random.default_rng(bits).integers(0, 2 ** bits, size=(d_in, d_out)).astype(np.uint8)
  got = np.asarray(packed.pack(jnp.asarray(codes), bits))
  assert got.dtype == np.uint8 and got.shape == (d_in * bits // 8, d_out)
  # Chunk c's word: Σ_k code[c·L + k] << (k·bits), stored as B little-endian bytes.
  words = sum(codes[k::rows].astype(np.int64) << (bits * k) for k in range(rows))
  want = np.stack([(words >> (8 * j)) & 0xFF for j in range(nbytes)], axis=1)
  np.testing.assert_array_equal(got, want.reshape(-1, d_out))
  np.testing.assert_array_equal(np.asarray(packed.unpack(jnp.asarray(got), bits)), codes)


def test_four_bits_is_q4s_layout():
  codes = np.random.default_rng(0).integers(0, 16, size=(10, 3)).astype(np.uint8)
  np.testing.assert_array_equal(packed.pack(jnp.asarray(codes), 4), q4.pack(jnp.asarray(codes)))


# --- the forward on the group grid -----------------------------------------------------------

# Every width, every group size and both zero-point kinds, each with each other one at least
# once (not the whole product: a compile each).
GRIDS = [(2, 0, False), (2, 32, True), (3, 128, False), (3, 0, True), (4, 128, False),
         (4, 32, True), (4, 0, False), (8, 128, True), (8, 32, False)]


@pytest.mark.parametrize("bits,group,sym", GRIDS)
def test_forward_is_x_times_the_grids_dequantized_weight(bits, group, sym):
  w = _w((256, 24), seed=bits)
  w[:128, 3] = 0.0  # an all-zero column of a group: codes = zero, weight exactly 0
  grid = methods.rtn(w, bits, group, sym)
  want = grid.dequantize()
  t = parse_spec(f"packed(bits={bits}, group={group}, sym={sym})")
  theta = packed.theta_from_grid(grid)
  assert set(theta) == set(t.keys) and theta["codes"].dtype == jnp.uint8
  kernel = jax.jit(t.apply)(theta)
  np.testing.assert_array_equal(np.asarray(materialize(kernel)), want)  # bit for bit
  for n_rows in (1, 3, packed.GROUPED_MAX_ROWS + 5):  # group by group, and one dot
    x = _w((n_rows, 256), seed=100 + n_rows)
    got = np.asarray(jax.jit(lambda k, x: k.left_matmul(x))(kernel, jnp.asarray(x)))
    # float32 rounding of sums of 256 terms: relative to the terms' magnitudes, which
    # (codes and zeros apart, scaled) exceed |w|'s
    rows = np.arange(256) // (group or 256)
    terms = np.abs(x) @ ((grid.codes + grid.zeros[rows]) * grid.scales[rows])
    assert np.all(np.abs(got - x.astype(np.float64) @ want) <= 1e-5 * terms)


@pytest.mark.parametrize("bits,group,sym", [(4, 128, False), (3, 32, True), (2, 0, False),
                                            (8, 64, True)])
def test_from_dense_is_theta_from_grid_of_rtn(bits, group, sym):
  w = _w((128, 40), seed=7)
  t = packed.Packed(bits=bits, group=group, sym=sym)
  want = packed.theta_from_grid(methods.rtn(w, bits, group, sym))
  for got in (t.from_dense(jnp.asarray(w)), jax.jit(t.from_dense)(jnp.asarray(w))):
    assert set(got) == set(want)
    for k in want:
      assert got[k].dtype == want[k].dtype
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_stored_bits_and_the_dtype_of_the_weight_replaced():
  w = jnp.asarray(_w((256, 64)))
  t = packed.Packed(bits=4, group=128)
  assert t.stored_bits(t.from_dense(w)) == pytest.approx(4 + 32 / 128 + 8 / 128)
  assert packed.Packed(bits=3, group=128, sym=True).stored_bits(
      packed.Packed(bits=3, group=128, sym=True).from_dense(w)) == pytest.approx(3 + 32 / 128)
  theta = t.from_dense(w.astype(jnp.bfloat16))
  assert theta["scales"].dtype == jnp.bfloat16
  assert materialize(t.apply(theta)).dtype == jnp.bfloat16


def test_packed_lora_starts_at_the_quantized_weight_and_trains_only_the_adapter():
  node = parse_spec("packed(bits=4, group=8)|lora(rank=2)")
  w = jnp.asarray(_w((16, 6), seed=4))
  theta = node.from_dense(w, jax.random.key(0))
  base = packed.Packed(bits=4, group=8)
  np.testing.assert_array_equal(materialize(node.apply(theta)),
                                materialize(base.apply(base.from_dense(w))))
  assert node.trainable(theta) == {"base": {"codes": False, "scales": False, "zeros": False},
                                   "lora_a": True, "lora_b": True}
  theta["lora_b"] = jnp.asarray(_w((2, 6), seed=5))
  x = jnp.asarray(_w((3, 16), seed=6))

  def loss(t):
    return jnp.sum(jnp.sin(node.apply(t).left_matmul(x)))

  grads = jax.grad(loss, allow_int=True)(theta)
  assert not np.any(grads["base"]["scales"]) and np.any(grads["lora_a"]) and np.any(grads["lora_b"])


@pytest.mark.parametrize("spec,shape,match", [
    ("packed(bits=5)", (128, 8), r"bits=5\): use 2, 3, 4 or 8"),
    ("packed(group=48)", (128, 8), r"group=48 does not divide d_in=128 of the \(128, 8\)"),
    ("packed(group=-1)", (128, 8), r"group=-1"),
    ("packed(bits=3, group=4)", (12, 8), r"d_in=12 .* not a multiple of 8, but 8 3-bit codes"),
    ("packed(bits=2, group=0)", (6, 8), r"not a multiple of 4"),
    ("packed", (4, 4, 4), "2-D"),
    ("sparse24", (6, 8), r"d_in=6 of the \(6, 8\) weight is not a multiple of 4")])
def test_bad_arguments_and_shapes_are_one_line_user_errors(spec, shape, match):
  with pytest.raises(UserError, match=match) as err:
    parse_spec(spec).check(shape)
  assert "\n" not in str(err.value)


def test_bad_argument_is_reported_with_the_config():
  assert packed.Packed(bits=6).arg_problems() == ["bits=6; use 2, 3, 4 or 8"]
  assert packed.Packed(group=-2).arg_problems()
  assert not packed.Packed().arg_problems()


# --- 2:4 sparsity, stored compressed ---------------------------------------------------------

def _np_top2_of_4(w):
  d_in, d_out = w.shape
  a = np.abs(w).reshape(d_in // 4, 4, d_out)
  order = np.argsort(-a, axis=1, kind="stable")  # ties: the earlier row first
  mask = np.zeros_like(a, bool)
  np.put_along_axis(mask, order[:, :2], True, axis=1)
  return mask.reshape(d_in, d_out)


@pytest.mark.parametrize("d_in", [12, 32])  # 12: 6 value rows, the last index byte padded
def test_sparse24_keeps_the_two_largest_of_four_and_its_forward_is_the_masked_dense(d_in):
  w = _w((d_in, 10), seed=d_in)
  w[4:8, 1] = [0.5, -0.5, 0.5, 0.0]  # a tie: the earlier rows win
  mask = _np_top2_of_4(w)
  assert mask[4:8, 1].tolist() == [True, True, False, False]
  t = parse_spec("sparse24")
  theta = t.from_dense(jnp.asarray(w))
  assert theta["values"].shape == (d_in // 2, 10)
  assert theta["index"].dtype == jnp.uint8 and theta["index"].shape == (-(-d_in // 8), 10)
  kernel = jax.jit(t.apply)(theta)
  np.testing.assert_array_equal(np.asarray(materialize(kernel)), np.where(mask, w, 0))
  x = _w((5, d_in), seed=1)
  np.testing.assert_allclose(np.asarray(kernel.left_matmul(jnp.asarray(x))),
                             x @ np.where(mask, w, 0), rtol=1e-5, atol=1e-5)


def test_sparse24_stores_a_given_mask_and_refuses_one_that_is_not_2_of_4():
  w = _w((16, 6), seed=2)
  rng = np.random.default_rng(0)
  mask = np.zeros((4, 4, 6), bool)
  for b in range(4):  # a random 2:4 pattern, not the magnitude one
    for j in range(6):
      mask[b, rng.choice(4, 2, replace=False), j] = True
  mask = mask.reshape(16, 6)
  theta = packed.theta_from_masked(jnp.asarray(w), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(packed.Sparse24().apply(theta).dense()),
                                np.where(mask, w, 0))
  mask[0, 0] = not mask[0, 0]
  with pytest.raises(UserError, match="other than 2 of some 4"):
    packed.theta_from_masked(jnp.asarray(w), jnp.asarray(mask))


# --- checkpoint bytes on disk ----------------------------------------------------------------

def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def test_checkpoint_bytes_of_packed_and_sparse24_kernels(tmp_path):
  """The block matrices of a (1-layer, 256-wide) Transformer saved with `save_params`."""
  from flax.core import meta  # noqa: PLC0415

  from reparam_jax.models import Transformer  # noqa: PLC0415
  from reparam_jax.models.config import TransformerConfig  # noqa: PLC0415
  from reparam_jax.reparam import Reparam  # noqa: PLC0415
  from reparam_jax.rundir.checkpoint import save_params  # noqa: PLC0415

  kernels = r"block_\d+/(attn/(query|key|value|out)|mlp/fc_(in|out))/kernel"
  model = Transformer(TransformerConfig(vocab_size=16, num_layers=1, num_heads=2, embed_dim=256,
                                        mlp_dim=1024, max_len=8))
  params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  blocks = {"block_0": {"attn": params["block_0"]["attn"], "mlp": params["block_0"]["mlp"]}}
  blocks = jax.tree_util.tree_map_with_path(  # the kernels only (no biases)
      lambda p, x: x if "kernel" in jax.tree_util.keystr(p) else None, blocks)
  sizes = {}
  for spec in ("", "packed(bits=4, group=128)", "packed(bits=3, group=128)", "sparse24"):
    tree = blocks if not spec else meta.unbox(
        Reparam.from_config({"rules": ((kernels, spec),)}).from_dense(blocks))
    save_params(str(tmp_path / (spec or "float32")), tree)
    sizes[spec or "float32"] = _dir_bytes(tmp_path / (spec or "float32"))
  ratio = {k: v / sizes["float32"] for k, v in sizes.items()}
  print("checkpoint bytes / float32:", ratio, sizes)
  # the float kernels are really in there (orbax compresses: random floats a few per cent)
  assert sizes["float32"] > 0.8 * 4 * 3 * 256 * 1024
  assert ratio["packed(bits=4, group=128)"] <= 0.30
  assert ratio["packed(bits=3, group=128)"] <= 0.16
  assert ratio["sparse24"] <= 17 / 32 + 0.03  # 16 value bits + 1 index bit per weight


def test_bench_smoke_decodes_the_same_tokens_as_the_dequantized_model():
  from bench import packed_decode  # noqa: PLC0415

  out = packed_decode.main(["--smoke"])
  assert out["same_tokens"] == "2/2"
  assert out["block_bytes"]["packed"] < 0.2 * out["block_bytes"]["float32"]


@pytest.mark.parametrize("sym,act_order", [(False, False), (True, True)])
def test_a_gptq_grid_is_stored_and_computes_what_gptq_computes(sym, act_order):
  from reparam_jax.compression.methods import LayerStats, gptq  # noqa: PLC0415

  x = _w((256, 64), seed=11) * np.linspace(0.1, 3, 64)  # uneven input channels
  stats = LayerStats(x.T @ x, len(x), np.abs(x).max(0), np.abs(x).mean(0), x[:0])
  result = gptq.apply(_w((64, 16), seed=12), stats, bits=3, group=32, sym=sym,
                      act_order=act_order)
  theta = packed.theta_from_grid(result.grid)
  dense = np.asarray(packed.Packed(bits=3, group=32, sym=sym).apply(theta).dense())
  np.testing.assert_array_equal(dense, result.grid.dequantize())
  np.testing.assert_allclose(dense, result.weight_IxO, rtol=1e-6, atol=1e-6)
