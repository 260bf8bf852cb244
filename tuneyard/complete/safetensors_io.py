"""Safetensors read one tensor at a time and written one tensor at a time.

The safetensors library loads or writes whole files (or maps them, and every page a merge
touches then counts as the process's memory). A merge needs neither: the header says where
each tensor lies, so a tensor is read with one seek and one read, and an output file's header
can be written first because every output shape and dtype is known before any data.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneyard.errors import Invalid

# Bytes per element of each safetensors dtype.
ITEM_SIZES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# A header is a few MB even for the largest models; more means a damaged file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file (offsets from the file's start)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of a safetensors file, checked against its size, and its metadata."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise Invalid(f"{path} is not a safetensors file: it is {size} bytes long.")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise Invalid(f"{path} is not a safetensors file, or it is truncated.")
            raw = handle.read(header_len)
    except OSError as exc:
        raise Invalid(f"{path} cannot be read ({exc.strerror}).") from None
    try:
        header: dict[str, Any] = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Invalid(f"{path} has a damaged safetensors header.") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise Invalid(f"{path} has a damaged safetensors header (tensor {name}).") from None
        if dtype not in ITEM_SIZES:
            raise Invalid(f"{path}: tensor {name} has dtype {dtype}, which save cannot read.")
        info = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
        if info.nbytes != info.numel * ITEM_SIZES[dtype] or info.end > size:
            raise Invalid(
                f"{path} is truncated or damaged: tensor {name} does not fit in the file."
            )
        tensors[name] = info
    return tensors, metadata


def torch_dtype(dtype: str):
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "U16": torch.uint16,
        "U32": torch.uint32,
        "U64": torch.uint64,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }[dtype]


def read_tensor(handle, info: TensorInfo):
    """Read one tensor from an open file into memory of its own (no mapping)."""
    import torch

    # torch.empty, unlike bytearray, does not zero memory that the read overwrites anyway.
    raw = torch.empty(info.nbytes, dtype=torch.uint8)
    view = raw.numpy().data.cast("B")
    handle.seek(info.start)
    done = 0
    while done < info.nbytes:
        count = handle.readinto(view[done:])
        if not count:
            raise Invalid(f"{handle.name} ended early while reading tensor {info.name}.")
        done += count
    return raw.view(torch_dtype(info.dtype)).reshape(info.shape)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = ITEM_SIZES[self.dtype]
        for size in self.shape:
            count *= size
        return count


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are all known up front, one tensor at a time.

    Tensors are laid out widest dtype first, as the safetensors library does, so every
    tensor's data starts aligned to its element size; `order` gives the order to write them.
    """

    def __init__(self, path: Path, tensors: list[PlannedTensor], metadata: dict[str, str]):
        self.path = path
        self.order = sorted(tensors, key=lambda t: -ITEM_SIZES[t.dtype])
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for tensor in self.order:
            header[tensor.name] = {
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            offset += tensor.nbytes
        self.data_bytes = offset
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-(8 + len(encoded)) % HEADER_ALIGNMENT)
        self._handle = path.open("wb")
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)
        self._next = 0

    def write(self, name: str, tensor) -> None:
        """Write the next tensor of `order`; its dtype and shape must be the planned ones."""
        import torch

        planned = self.order[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape:
            raise ValueError(f"expected tensor {planned.name} {planned.shape}, got {name}")
        if tensor.dtype != torch_dtype(planned.dtype):
            raise ValueError(f"tensor {name} is {tensor.dtype}, planned {planned.dtype}")
        if planned.nbytes:
            flat = tensor.contiguous().reshape(-1).view(torch.uint8)
            self._handle.write(flat.numpy().data)
        self._next += 1

    def close(self) -> None:
        """Flush and fsync; the file is complete only if every planned tensor was written."""
        try:
            if self._next != len(self.order):
                raise ValueError(f"{self.path}: {len(self.order) - self._next} tensors unwritten")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        finally:
            self._handle.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._handle.close()
