"""Writing `.pth` files as `torch.save` does, without PyTorch, for tests: a
state dict of NumPy arrays in PyTorch's zip layout (`<name>/data.pkl` with one
persistent id per storage, `<name>/data/<key>`, `byteorder`, `version`).
tests/golden/synctalk_reference.py loads what this writes with
`torch.load(weights_only=True)`, so the layout is checked against PyTorch.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage"}


def _string(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(value: int) -> bytes:
    if 0 <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)  # BININT
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def state_dict_pickle(shapes: dict[str, tuple[str, int, tuple[int, ...]]]) -> bytes:
    """The data.pkl torch writes for {name: (storage type, storage key, shape)}:
    an OrderedDict of `_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())`,
    each storage a persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R("]
    for name, (storage, key, shape) in shapes.items():
        strides, step = [], 1
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
        out += [_string(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(",
                b"(" + _string("storage") + _global("torch", storage) + _string(key) + _string("cpu")
                + _int(step) + b"tQ",  # the persistent id, BINPERSID
                _int(0), _tuple(shape), _tuple(strides), b"\x89",  # NEWFALSE: requires_grad
                _global("collections", "OrderedDict"), b")R", b"tR"]
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def write_pth(path: Path, state: dict[str, np.ndarray], name: str = "archive") -> None:
    """`torch.save(state_dict, path)` for a dict of NumPy arrays."""
    storages = {str(i): np.ascontiguousarray(array) for i, array in enumerate(state.values())}
    shapes = {key: (STORAGE_NAMES[array.dtype], str(i), array.shape) for i, (key, array) in enumerate(state.items())}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", state_dict_pickle(shapes))
        archive.writestr(f"{name}/byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"{name}/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
        archive.writestr(f"{name}/version", "3\n")


def malicious_pth(path: Path, command_effect: Path, legacy: bool = False) -> None:
    """A checkpoint whose pickle calls os.system to create `command_effect`
    when loaded by a plain unpickler (zip layout, or the legacy stream)."""
    payload = (b"\x80\x02cos\nsystem\nX" + len(f"touch {command_effect}").to_bytes(4, "little")
               + f"touch {command_effect}".encode() + b"\x85R.")
    if legacy:
        Path(path).write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                               + pickle.dumps({"little_endian": True}, protocol=2) + payload)
        return
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
