"""q4 (QLoRA's packed 4-bit base): codebooks, packing, block scales, double quantization,
storage size, and `q4|lora` / `qweight|lora` training through the real trainer.

References are computed here with numpy from the formulas of docs/qlora.md, not with q4.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reparam_jax.errors import UserError
from reparam_jax.reparam import materialize
from reparam_jax.reparam.rules import parse_spec
from reparam_jax.reparam.transforms import q4
from tests.helpers import tiny_args

# QLoRA (Dettmers et al. 2023), Appendix E: the NF4 values as published.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def _w(shape, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _np_absmax(w, block):
  m, n = w.shape
  return np.abs(np.asarray(w, np.float64)).reshape(m // block, block, n).max(axis=1)


def test_nf4_codebook_matches_the_published_table():
  np.testing.assert_allclose(q4.nf4_codebook(), NF4_PUBLISHED, atol=1e-4)
  assert q4.nf4_codebook()[7] == 0.0 and len(set(q4.nf4_codebook())) == 16


def test_int4_codebook_is_the_symmetric_integer_grid():
  np.testing.assert_allclose(q4.int4_codebook()[1:], np.arange(-7, 8) / 7, atol=1e-7)


def test_pack_unpack_round_trip_is_exact():
  codes = np.random.default_rng(0).integers(0, 16, size=(10, 7)).astype(np.uint8)
  packed = np.asarray(q4.pack(jnp.asarray(codes)))
  assert packed.dtype == np.uint8 and packed.shape == (5, 7)
  np.testing.assert_array_equal(packed, codes[0::2] + 16 * codes[1::2])  # row 2i low nibble
  np.testing.assert_array_equal(np.asarray(q4.unpack(jnp.asarray(packed))), codes)


@pytest.mark.parametrize("fmt", ["nf4", "int4"])
def test_dequantized_entry_is_the_nearest_code_times_block_absmax(fmt):
  block = 8
  w = np.array(_w((32, 6), seed=1))
  w[8:16, 2] = 0.0  # an all-zero block stays zero
  t = q4.Q4(format=fmt, block_size=block)
  theta = t.from_dense(jnp.asarray(w))
  absmax = _np_absmax(w, block)
  np.testing.assert_array_equal(np.asarray(theta["absmax"], np.float64), absmax)  # exact
  cb = np.asarray(NF4_PUBLISHED if fmt == "nf4" else np.arange(-7, 8) / 7)
  a = np.repeat(absmax, block, axis=0)
  x = np.divide(w, a, out=np.zeros_like(w), where=a > 0)
  want = a * cb[np.abs(x[..., None] - cb).argmin(-1)]
  got = np.asarray(materialize(t.apply(theta)))
  np.testing.assert_allclose(got, want, atol=1e-5)
  half_step = np.diff(cb).max() / 2
  assert np.all(np.abs(got - w) <= half_step * a + 1e-6)
  assert not np.any(got[8:16, 2])


def test_double_quant_scales_are_within_half_an_8bit_step():
  w = np.asarray(_w((64, 300), seed=2))  # d_out 300: one full and one partial 256-block
  block = 4
  t = q4.Q4(block_size=block, double_quant=True)
  theta = t.from_dense(jnp.asarray(w))
  assert theta["absmax_q"].dtype == jnp.int8 and theta["absmax_scale"].shape == (16, 2)
  absmax = _np_absmax(w, block)
  centred = absmax - absmax.mean()
  s2 = np.stack([np.abs(centred[:, :256]).max(1), np.abs(centred[:, 256:]).max(1)], 1) / 127
  per_col = np.concatenate([np.repeat(s2[:, :1], 256, 1), np.repeat(s2[:, 1:], 44, 1)], 1)
  got = np.asarray(q4.dequantize_scales(theta["absmax_q"], theta["absmax_scale"],
                                        theta["absmax_mean"]))
  assert np.all(np.abs(got - absmax) <= per_col / 2 * (1 + 1e-5) + 1e-7)
  # The weight is then within half a code step of the reconstructed scale, plus its error.
  dense = np.asarray(materialize(t.apply(theta)))
  a = np.repeat(absmax, block, axis=0)
  bound = np.diff(NF4_PUBLISHED).max() / 2 * a + np.repeat(per_col / 2, block, axis=0)
  assert np.all(np.abs(dense - w) <= bound + 1e-6)


def test_bits_per_weight_of_the_stored_form():
  w = _w((128, 512), seed=3)
  theta = q4.Q4().from_dense(w)
  assert theta["packed"].dtype == jnp.uint8 and theta["packed"].shape == (64, 512)
  assert q4.bits_per_weight(theta) == pytest.approx(4 + 32 / 64)
  theta = q4.Q4(double_quant=True).from_dense(w)
  want = 4 + 8 / 64 + 32 / (256 * 64) + 32 / w.size  # codes, int8 scales, their scales, mean
  assert q4.bits_per_weight(theta) == pytest.approx(want)
  assert want == pytest.approx(4.127, abs=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dequantized_weight_has_the_dtype_it_replaced(dtype):
  w = _w((16, 4), dtype=dtype)
  for t in (q4.Q4(block_size=8), q4.Q4(block_size=8, double_quant=True)):
    dense = materialize(t.apply(t.from_dense(w)))
    assert dense.dtype == dtype
    x = jnp.ones((3, 16), dtype)
    np.testing.assert_allclose(np.asarray(t.apply(t.from_dense(w)).left_matmul(x), np.float32),
                               np.asarray(x @ dense, np.float32), rtol=2e-2, atol=2e-2)


def test_q4_lora_starts_at_the_quantized_model_and_trains_only_the_adapter():
  node = parse_spec("q4(block_size=4)|lora(rank=2)")
  w = _w((8, 6), seed=4)
  theta = node.from_dense(w, jax.random.key(0))
  assert not np.any(theta["lora_b"])
  base = q4.Q4(block_size=4)
  np.testing.assert_array_equal(materialize(node.apply(theta)),
                                materialize(base.apply(base.from_dense(w))))
  assert node.trainable(theta) == {"base": {"packed": False, "absmax": False},
                                   "lora_a": True, "lora_b": True}
  theta["lora_b"] = _w((2, 6), seed=5)
  x = _w((3, 8), seed=6)
  grads = jax.grad(lambda t: jnp.sum(jnp.sin(node.apply(t).left_matmul(x))), allow_int=True)(theta)
  assert not np.any(grads["base"]["absmax"]) and np.any(grads["lora_a"]) and np.any(grads["lora_b"])


@pytest.mark.parametrize("shape,match", [
    ((30, 8), r"\(30, 8\).*block_size=10"), ((15, 4), r"d_in=15 of the \(15, 4\) weight is odd"),
    ((4, 4, 4), "2-D")])
def test_bad_shapes_are_user_errors_naming_the_shape(shape, match):
  with pytest.raises(UserError, match=match):
    q4.Q4(block_size=64 if shape != (30, 8) else 12).check(shape)


def test_bad_arguments_are_user_errors():
  with pytest.raises(UserError, match="format"):
    parse_spec("q4(format=fp4)").check((8, 8))
  assert q4.Q4(block_size=0).arg_problems()


# --- through the trainer (reparam_jax.train's library entry point) ----------------------------

# One attention kernel ([D, H, Dh]) and one MLP kernel ([D, F]): each kernel shape once.
KERNELS = r"block_\d+/(attn/query|mlp/fc_in)/kernel"
SPECS = ["q4(block_size=8, double_quant=True)|lora(rank=2)", "qweight(bits=8)|lora(rank=2)"]


def _train(workdir, raw, tfds, spec=None, **overrides):
  from reparam_jax import train  # noqa: PLC0415

  args = tiny_args(str(workdir), raw, tfds, num_steps=3, checkpoint_every=1, keep_checkpoints=5,
                   eval_every=3, **overrides)
  if spec:
    args.append(f"--config.reparam.rules=((r'{KERNELS}', '{spec}'),)")
  return train.main(args)


def _kernel(params, path="block_0/mlp/fc_in/kernel"):
  for k in path.split("/"):
    params = params[k]
  return params


def _step_params(workdir, step):
  from reparam_jax.rundir import checkpoint  # noqa: PLC0415
  return checkpoint.restore_spread(workdir / "checkpoints" / str(step) / "state")["params"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, raw_data_dir, tfds_dir):
  workdir = tmp_path_factory.mktemp("dense")
  _train(workdir, raw_data_dir, tfds_dir)
  return workdir


# Each case is a short real run (about 30 s on the shared 2-core CPU): one of each spec and
# start by default, the other two with `-m slow`.
CASES = [(SPECS[0], "pretrained"), (SPECS[1], "scratch"),
         pytest.param(SPECS[0], "scratch", marks=pytest.mark.slow),
         pytest.param(SPECS[1], "pretrained", marks=pytest.mark.slow)]


@pytest.mark.heavy
@pytest.mark.parametrize("spec,start", CASES)
def test_storage_base_with_lora_trains_in_the_trainer(spec, start, tmp_path, dense_run,
                                                      raw_data_dir, tfds_dir):
  """Before the fix, trainer initialisation raised (qweight's init) and then the train step
  did (jax.grad over int8 leaves)."""
  from reparam_jax.rundir import checkpoint  # noqa: PLC0415

  extra = {"init_from": str(dense_run)} if start == "pretrained" else {}
  final = _train(tmp_path, raw_data_dir, tfds_dir, spec, **extra)
  assert math.isfinite(final["eval/loss"])
  first, last = _kernel(_step_params(tmp_path, 1)), _kernel(_step_params(tmp_path, 3))
  int_key = "packed" if spec.startswith("q4") else "q"
  assert first["base"][int_key].dtype == (np.uint8 if int_key == "packed" else np.int8)
  for k in first["base"]:  # the frozen base is bit-identical from step to step
    np.testing.assert_array_equal(first["base"][k], last["base"][k])
  assert not np.array_equal(first["lora_b"], last["lora_b"])  # the adapter trains
  if start == "pretrained":  # the base is the checkpoint's weight, quantized
    dense = _kernel(checkpoint.load_params(str(dense_run)))
    want = parse_spec(spec.split("|")[0]).from_dense(jnp.asarray(dense))
    for k in want:
      np.testing.assert_array_equal(last["base"][k], np.asarray(want[k]))
