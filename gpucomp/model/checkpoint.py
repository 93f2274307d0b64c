"""PyTorch checkpoints (`.pth`) read as NumPy arrays, without PyTorch and
without running any code from the file.

A checkpoint is a pickle, and a pickle can name any Python callable to call
while it loads: that is how a malicious `.pth` runs code. Here the pickle is
read by an unpickler that admits only what a file of weights needs, as
PyTorch's own `weights_only` loading does: the functions that rebuild a tensor
or a parameter from a storage, the storage types (they only name a dtype),
`collections.OrderedDict`, `torch.Size` and the plain containers pickle builds
itself (dict, list, tuple, set, str, numbers). Anything else is refused before
it is touched, naming what the file asked for.

Both layouts `torch.save` writes are read:

- zip (PyTorch >= 1.6): `<name>/data.pkl` is the pickle, each storage a file
  `<name>/data/<key>`, `<name>/byteorder` says the byte order;
- legacy (`_use_new_zipfile_serialization=False`, older PyTorch): four pickles
  in a row (magic number, protocol 1001, system info, the object), then the
  list of storage keys and each storage as an int64 element count and its bytes.

A tensor is a view of a storage (offset, shape, strides in elements); every
view is checked to lie inside its storage before it is copied out.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ModelError, file_problem

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> element type. bfloat16 has no NumPy type: its 16 bits
# are the upper half of a float32 and are widened to one.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointRefused(ModelError):
    """The checkpoint asks for something a file of weights never needs."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        kind = STORAGE_DTYPES[self.name]
        return np.dtype(np.uint16) if kind == "bfloat16" else np.dtype(kind)


@dataclass
class _Storage:
    kind: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None  # filled from the zip member or the legacy stream


class _Tensor:
    """A view of a storage, materialised once every storage has been read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelError(f"malformed tensor: its {what} is not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # (requires_grad, backward_hooks, metadata) do not change the numbers
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise ModelError("malformed tensor: not a view of a storage")
    return _Tensor(storage, storage_offset, _ints(size, "shape"), _ints(stride, "strides"))


def _rebuild_parameter(data, *_ignored):
    # (requires_grad, backward_hooks[, state]): a parameter is its tensor
    if not isinstance(data, _Tensor):
        raise ModelError("malformed parameter: it holds no tensor")
    return data


def _size(*args):
    return tuple(*args)


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream, storages: dict):
        super().__init__(stream)
        self.storages = storages  # key -> _Storage, shared by every tensor that views it

    def find_class(self, module, name):
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise CheckpointRefused(f"its pickle asks for {module}.{name}, which a file of weights never needs "
                                    f"(loading it would run code); nothing from it was run")
        return allowed

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ModelError(f"malformed storage reference {str(pid)[:60]}")
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelError(f"malformed storage reference {str(pid)[:60]}")
        if len(pid) == 6 and pid[5] is not None:  # legacy views of a shared storage (PyTorch < 1.0)
            raise ModelError("storage views of PyTorch before 1.0 are not read; save the checkpoint again with "
                             "a current PyTorch")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(kind, key, numel)
        elif storage.kind != kind:
            raise ModelError(f"storage {key} is read as two different types")
        return storage


def _little_endian(data: np.ndarray, little: bool) -> np.ndarray:
    return data if little or data.dtype.itemsize == 1 else data.view(data.dtype.newbyteorder(">"))


def _read_zip(archive: zipfile.ZipFile) -> tuple[object, dict]:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ModelError("a zip file but not a PyTorch checkpoint (no <name>/data.pkl in it)")
    prefix = pickles[0][: -len("data.pkl")]
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    names = set(archive.namelist())
    little = archive.read(prefix + "byteorder").strip() != b"big" if prefix + "byteorder" in names else True
    for storage in storages.values():
        member = f"{prefix}data/{storage.key}"
        if member not in names:
            raise ModelError(f"storage {storage.key} is missing from the archive")
        dtype = storage.kind.dtype
        if archive.getinfo(member).file_size != storage.numel * dtype.itemsize:
            raise ModelError(f"storage {storage.key} holds {archive.getinfo(member).file_size} bytes, its "
                             f"reference says {storage.numel} elements of {dtype.itemsize} bytes")
        storage.data = _little_endian(np.frombuffer(archive.read(member), dtype), little)
    return obj, storages


def _read_legacy(stream) -> tuple[object, dict]:
    storages: dict[str, _Storage] = {}
    header = [_Unpickler(stream, storages).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL or not isinstance(header[2], dict):
        raise ModelError("not a PyTorch checkpoint (a pickle without PyTorch's header)")
    little = bool(header[2].get("little_endian", True))
    obj = _Unpickler(stream, storages).load()
    keys = _Unpickler(stream, storages).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ModelError("the list of storages after the pickle does not match the storages it references")
    for key in keys:
        storage = storages[key]
        dtype = storage.kind.dtype
        count = stream.read(8)
        numel = int.from_bytes(count, "little" if little else "big", signed=True) if len(count) == 8 else -1
        if numel != storage.numel:
            raise ModelError(f"storage {key} is truncated or does not match its reference")
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ModelError(f"storage {key} is truncated ({len(raw)} of {numel * dtype.itemsize} bytes)")
        storage.data = _little_endian(np.frombuffer(raw, dtype), little)
    return obj, storages


def _materialise(tensor: _Tensor) -> np.ndarray:
    storage = tensor.storage
    if not isinstance(storage, _Storage) or storage.data is None:
        raise ModelError("malformed tensor: its storage was never read")
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ModelError(f"malformed tensor of shape {list(size)}")
    if 0 in size:
        values = np.zeros(size, storage.data.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= len(storage.data):
            raise ModelError(f"a tensor of shape {list(size)} reaches past the end of its storage {storage.key}")
        item = storage.data.dtype.itemsize
        values = np.lib.stride_tricks.as_strided(storage.data[offset:], shape=size,
                                                 strides=[s * item for s in stride]).copy()
    if storage.kind.name == "BFloat16Storage":
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(values.dtype.newbyteorder("="), copy=False)


def _resolve(obj, depth: int = 0):
    """The object with every tensor view replaced by its NumPy array."""
    if depth > 100:
        raise ModelError("nested too deeply for a checkpoint")
    if isinstance(obj, _Tensor):
        return _materialise(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, depth + 1) for v in obj)
    return obj


def load_checkpoint(path: Path):
    """The checkpoint's object with tensors as NumPy arrays, or a ModelError
    (CheckpointRefused for a pickle that asks for code) naming the file."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ModelError(f"{path}: {'checkpoint not found' if problem == 'file not found' else problem}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head.startswith(b"PK"):
                with zipfile.ZipFile(f) as archive:
                    obj, _ = _read_zip(archive)
            elif head[:1] == b"\x80":
                obj, _ = _read_legacy(f)
            else:
                raise ModelError("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
            return _resolve(obj)
    except ModelError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # a damaged pickle or archive raises many types; all mean the same here
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({text})") from None


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint that is a state dict ({name: tensor}, what
    `torch.save(model.state_dict(), path)` writes), in the file's order."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state dict ({{name: tensor}})")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise ModelError(f"{path}: entry {str(name)[:60]!r} is a {type(value).__name__}, not a tensor; "
                             f"a state dict maps names to tensors (torch.save(model.state_dict(), path))")
    return dict(obj)
