"""safetensors files are read as views of the file mapped into memory: every dtype the
format stores, with the values `safetensors` itself reads, and a broken file is one line."""

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.flax
import safetensors.numpy

from reparam_jax.errors import UserError
from reparam_jax.hf.files import read_weights


def test_tensors_are_mapped_views_with_safetensors_values(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
            "f16": rng.standard_normal((4,)).astype(np.float16),
            "f64": rng.standard_normal((2, 2)),
            "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
            "u8": np.arange(7, dtype=np.uint8), "flag": np.array([True, False]),
            "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32)}
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(arrays, path)
  got = read_weights(path)
  want = safetensors.numpy.load_file(path)
  assert set(got) == set(want)
  for name, value in want.items():
    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert not got["f32"].flags.writeable  # the file's pages, not a copy
  assert isinstance(got["f32"].base, np.ndarray) and got["f32"].base is not None

  bf16 = str(tmp_path / "bf16.safetensors")  # numpy has no bfloat16: written through JAX
  safetensors.flax.save_file({"w": jnp.asarray(arrays["f32"], jnp.bfloat16)}, bf16)
  w = read_weights(bf16)["w"]
  assert w.dtype == jnp.bfloat16
  np.testing.assert_array_equal(w.astype(np.float32),
                                np.asarray(jnp.asarray(arrays["f32"], jnp.bfloat16), np.float32))


def test_a_broken_safetensors_file_is_a_one_line_error(tmp_path):
  path = tmp_path / "model.safetensors"
  safetensors.numpy.save_file({"w": np.ones((4, 4), np.float32)}, str(path))
  path.write_bytes(path.read_bytes()[:20])  # the header cut short
  with pytest.raises(UserError, match="is not a readable safetensors file"):
    read_weights(str(path))
