"""Read a PyTorch checkpoint in the legacy (non-zip) ``torch.save`` format into numpy arrays, without torch.

The legacy format is a sequence of pickles: the magic number, the protocol version (1001), a dict of
system information (byte order, type sizes), the saved object itself with every storage replaced by a
persistent id, the list of storage keys, and then, for each key in that order, the storage's element
count as an 8-byte integer followed by its raw bytes.

Unpickling runs code named by the file, so this reader resolves only the few names a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, the ``torch.*Storage`` types); any
other global in any of the pickles raises :class:`UnsafeCheckpoint` before it is called.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch's storage type names -> numpy element types (byte order applied later, from the system info)
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointError(ValueError):
    """The file is not a legacy PyTorch checkpoint this reader understands."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle in the checkpoint names a class or function outside the allowed few."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    dtype: np.dtype[Any]
    numel: int
    data: npt.NDArray[Any] | None = None  # filled in once the raw bytes after the pickles are read


@dataclass(frozen=True)
class _View:
    root: _Storage
    offset: int  # in elements of the root
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage | _View
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> npt.NDArray[Any]:
        if isinstance(self.storage, _View):
            root, base, limit = (
                self.storage.root,
                self.storage.offset,
                self.storage.offset + self.storage.numel,
            )
        else:
            root, base, limit = self.storage, 0, self.storage.numel
        if root.data is None:
            raise CheckpointError("a tensor's storage was never written in the file")
        native = root.data.dtype.newbyteorder("=")
        if any(n < 0 for n in self.size) or self.offset < 0:
            raise CheckpointError("a tensor with a negative size or offset")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, native)
        start = base + self.offset
        spans = [(n - 1) * s for n, s in zip(self.size, self.stride, strict=True)]
        lowest, highest = start + sum(d for d in spans if d < 0), start + sum(d for d in spans if d > 0)
        if lowest < base or highest >= limit:
            raise CheckpointError("a tensor reaches outside its storage")
        item = root.data.itemsize  # every element it reads lies in [lowest, highest], checked above
        view = np.lib.stride_tricks.as_strided(
            root.data[start:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view, dtype=native, copy=True)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks and metadata ignored)."""
    if not isinstance(storage, _Storage | _View):
        raise CheckpointError("_rebuild_tensor_v2 called on something that is not a storage")
    if not isinstance(storage_offset, int) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise CheckpointError("_rebuild_tensor_v2 called with malformed arguments")
    if len(size) != len(stride) or not all(isinstance(v, int) for v in (*size, *stride)):
        raise CheckpointError("_rebuild_tensor_v2 called with malformed size or stride")
    return _TensorRef(storage, storage_offset, size, stride)


@dataclass
class _State:
    storages: dict[str, _Storage] = field(default_factory=dict)
    views: dict[str, _View] = field(default_factory=dict)


class _Unpickler(pickle.Unpickler):
    """Resolves only the allowed names; everything else is refused before it can be imported."""

    def __init__(self, file: IO[bytes], state: _State) -> None:
        super().__init__(file, encoding="utf-8")
        self._state = state

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise UnsafeCheckpoint(f"checkpoint references {module}.{name}, which this reader does not allow")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise CheckpointError("malformed storage reference")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError("malformed storage size")
        storage = self._state.storages.get(key)
        if storage is None:
            storage = _Storage(storage_type.dtype, numel)
            self._state.storages[key] = storage
        elif storage.dtype != storage_type.dtype:
            raise CheckpointError(f"storage {key} referenced with two element types")
        if view is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
            raise CheckpointError("malformed storage view")
        view_key, offset, size = view
        ref = self._state.views.get(str(view_key))
        if ref is None:
            ref = _View(storage, offset, size)
            self._state.views[str(view_key)] = ref
        return ref


def _load_one(f: IO[bytes], state: _State) -> Any:
    try:
        return _Unpickler(f, state).load()
    except UnsafeCheckpoint:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
    ) as exc:
        raise CheckpointError(f"not a legacy PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _flatten(obj: Any, prefix: str, out: dict[str, npt.NDArray[Any]]) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix] = obj.materialize()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    # anything else (ints, strings, None: e.g. an epoch counter next to the weights) carries no tensor


def read(source: Path | str | bytes | IO[bytes]) -> dict[str, npt.NDArray[Any]]:
    """Every tensor in the checkpoint as a numpy array, by its (dotted) name, in the file's order."""
    if isinstance(source, bytes):
        return _read(io.BytesIO(source))
    if isinstance(source, Path | str):
        with open(source, "rb") as f:
            return _read(f)
    return _read(source)


def _read(f: IO[bytes]) -> dict[str, npt.NDArray[Any]]:
    state = _State()
    head = f.read(6)
    f.seek(-len(head), io.SEEK_CUR)
    if head.startswith(b"PK"):
        raise CheckpointError("a zip-format checkpoint (torch >= 1.6 default), not the legacy format")
    if _load_one(f, state) != MAGIC_NUMBER:
        raise CheckpointError("not a legacy PyTorch checkpoint (wrong magic number)")
    if (version := _load_one(f, state)) != PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy protocol version {version!r}")
    sys_info = _load_one(f, state)
    if not isinstance(sys_info, dict):
        raise CheckpointError("malformed system information")
    order: Literal["<", ">"] = "<" if sys_info.get("little_endian", True) else ">"
    obj = _load_one(f, state)
    keys = _load_one(f, state)
    if not isinstance(keys, list) or set(keys) != set(state.storages) or len(keys) != len(state.storages):
        raise CheckpointError("the storage key list does not match the storages the object references")
    for key in keys:
        storage = state.storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"file ends before storage {key}")
        (count,) = struct.unpack(f"{order}q", header)
        if count != storage.numel:
            raise CheckpointError(f"storage {key}: {count} elements in the file, {storage.numel} referenced")
        dtype = storage.dtype.newbyteorder(order)
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise CheckpointError(f"file ends inside storage {key}")
        storage.data = np.frombuffer(raw, dtype=dtype)
    for view in state.views.values():
        if view.offset < 0 or view.offset + view.numel > view.root.numel:
            raise CheckpointError("a storage view reaches outside its storage")
    out: dict[str, npt.NDArray[Any]] = {}
    _flatten(obj, "", out)
    return out
