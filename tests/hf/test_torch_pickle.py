"""pytorch_model.bin read without PyTorch: both container formats, dtypes, views, safety."""

import io
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reparam_jax.errors import UserError  # noqa: E402
from reparam_jax.hf.torch_pickle import load_torch_state_dict  # noqa: E402


def _state():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return {"float": torch.randn(3, 4, generator=g), "transposed": base.t(),
          "slice": base[2:4, 1:], "shared": base, "half": torch.randn(4, generator=g).half(),
          "bf16": torch.randn(2, 3, generator=g).bfloat16(), "long": torch.arange(7),
          "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
          "scalar": torch.tensor(2.5), "param": torch.nn.Parameter(torch.ones(2))}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_saves(tmp_path, zip_format):
  state = _state()
  path = str(tmp_path / "sd.bin")
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  got = load_torch_state_dict(path)
  assert set(got) == set(state)
  for name, tensor in state.items():
    want = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else (
        tensor.detach().numpy())
    assert got[name].shape == want.shape, name
    np.testing.assert_array_equal(np.asarray(got[name]).astype(want.dtype), want, err_msg=name)
  assert got["half"].dtype == np.float16 and got["long"].dtype == np.int64
  assert str(got["bf16"].dtype) == "bfloat16"


def test_refuses_code_in_the_pickle(tmp_path):
  """A pickle that would call os.system is rejected, not executed."""
  class Evil:
    def __reduce__(self):
      import os
      return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

  path = tmp_path / "evil.bin"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(UserError, match="cannot read (posix|os).system without PyTorch"):
    load_torch_state_dict(str(path))
  assert not (tmp_path / "pwned").exists()


def test_garbage_is_a_user_error(tmp_path):
  path = tmp_path / "garbage.bin"
  path.write_bytes(b"not a checkpoint at all" * 10)
  with pytest.raises(UserError, match="not a readable PyTorch checkpoint|neither a zip"):
    load_torch_state_dict(str(path))
  buf = io.BytesIO()
  torch.save([torch.ones(2)], buf)
  (tmp_path / "list.bin").write_bytes(buf.getvalue())
  with pytest.raises(UserError, match="not a state dict"):
    load_torch_state_dict(str(tmp_path / "list.bin"))
