"""Reads PyTorch `pytorch_model.bin` state dicts into numpy, without PyTorch.

A `torch.save` file is a pickle whose tensors refer to raw storages by
*persistent id*.  Two container layouts exist:

* zip (torch ≥ 1.6): `<root>/data.pkl`, the storages as `<root>/data/<key>`
  and an optional `<root>/byteorder`;
* legacy: a stream of pickles (magic number, protocol, system info, the
  object, the list of storage keys) followed by each storage as an int64
  element count and its bytes.

The unpickler is restricted: it resolves only the handful of globals a
state dict needs (tensor rebuild functions, storage classes, dtypes,
`OrderedDict`), so a malicious checkpoint cannot run code when read.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np
from jax.numpy import bfloat16

from reparam_jax.errors import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": bfloat16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
    "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A storage whose bytes are fetched on first use (after unpickling, for legacy files)."""

  def __init__(self, dtype: np.dtype, fetch: Callable[[], bytes]):
    self.dtype = dtype
    self._fetch = fetch
    self._array: np.ndarray | None = None

  def array(self, big_endian: bool) -> np.ndarray:
    if self._array is None:
      dtype = self.dtype.newbyteorder(">") if big_endian and self.dtype.itemsize > 1 else self.dtype
      self._array = np.frombuffer(self._fetch(), dtype=dtype)
    return self._array


class _LazyTensor:
  """Storage + view geometry; materialized once every storage is known."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple,
               dtype: np.dtype | None = None):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
    self.dtype = dtype

  def numpy(self, big_endian: bool) -> np.ndarray:
    flat = self.storage.array(big_endian)
    if self.dtype is not None and self.dtype != flat.dtype:
      flat = flat.view(self.dtype)
    item = flat.dtype.itemsize
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype.newbyteorder("="))
    view = np.ndarray(self.size, flat.dtype, buffer=flat, offset=self.offset * item,
                      strides=tuple(s * item for s in self.stride))
    return view.astype(flat.dtype.newbyteorder("="))  # a native-order copy


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
  del requires_grad, hooks, metadata
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
  del requires_grad, hooks, metadata
  return _LazyTensor(storage, offset, size, stride, np.dtype(dtype.dtype))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
  del requires_grad, hooks, state
  return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(dt) for name, dt in _STORAGE_DTYPES.items()},
    **{("torch", name): _StorageType(dt) for name, dt in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, file: Any, path: str, persistent_load: Callable[[tuple], Any]):
    super().__init__(file)
    self._path = path
    self._persistent_load = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    raise UserError(f"{self._path}: cannot read {module}.{name} without PyTorch (only plain "
                    "tensor state dicts are supported); re-save it as model.safetensors")

  def persistent_load(self, pid: Any) -> Any:
    return self._persistent_load(pid)


def _as_str(x: Any) -> str:
  return x.decode("ascii") if isinstance(x, bytes) else str(x)


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """`{name: array}` of a `torch.save`d state dict (zip or legacy format)."""
  try:
    if zipfile.is_zipfile(path):
      tree, big_endian = _load_zip(path)
    else:
      tree, big_endian = _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error, ValueError) as e:
    raise UserError(f"{path} is not a readable PyTorch checkpoint ({e})") from None
  if not isinstance(tree, dict):
    raise UserError(f"{path} holds a {type(tree).__name__}, not a state dict of tensors")
  out = {}
  for name, value in tree.items():
    if isinstance(value, _LazyTensor):
      out[name] = value.numpy(big_endian)
  return out


def _load_zip(path: str) -> tuple[Any, bool]:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise UserError(f"{path} is a zip file without data.pkl: not a PyTorch checkpoint")
    root = pkl[0][:-len("data.pkl")]
    big_endian = False
    if root + "byteorder" in names:
      big_endian = zf.read(root + "byteorder").decode().strip() == "big"
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: tuple) -> _Storage:
      kind, storage_type, key, _location, _numel = pid
      if _as_str(kind) != "storage":
        raise UserError(f"{path}: unsupported persistent object {kind!r}")
      key = _as_str(key)
      if key not in storages:
        data = zf.read(f"{root}data/{key}")
        storages[key] = _Storage(storage_type.dtype, lambda data=data: data)
      return storages[key]

    tree = _Unpickler(io.BytesIO(zf.read(pkl[0])), path, persistent_load).load()
    # Materialize while the archive is open (storages were read eagerly above).
    return tree, big_endian


def _load_legacy(path: str) -> tuple[Any, bool]:
  with open(path, "rb") as f:
    raw = f.read()
  stream = io.BytesIO(raw)

  def no_storage(pid: tuple) -> Any:
    raise UserError(f"{path}: unexpected storage {pid[:3]!r} outside the state dict")

  def plain() -> Any:
    return _Unpickler(stream, path, no_storage).load()

  if plain() != _LEGACY_MAGIC:
    raise UserError(f"{path} is neither a zip nor a legacy PyTorch checkpoint")
  plain()  # protocol version
  sys_info = plain()
  big_endian = not sys_info.get("little_endian", True)
  storages: dict[str, _Storage] = {}
  contents: dict[str, bytes] = {}

  def persistent_load(pid: tuple) -> _Storage:
    kind, storage_type, key, _location, _numel, view = pid
    if _as_str(kind) != "storage" or view is not None:
      raise UserError(f"{path}: unsupported legacy storage {pid[:3]!r}")
    key = _as_str(key)
    if key not in storages:
      storages[key] = _Storage(storage_type.dtype, lambda key=key: contents[key])
    return storages[key]

  tree = _Unpickler(stream, path, persistent_load).load()
  keys = plain()
  for key in keys:
    key = _as_str(key)
    (numel,) = struct.unpack("<q" if not big_endian else ">q", stream.read(8))
    nbytes = numel * storages[key].dtype.itemsize
    contents[key] = stream.read(nbytes)
    if len(contents[key]) != nbytes:
      raise UserError(f"{path} is truncated (storage {key})")
  return tree, big_endian
