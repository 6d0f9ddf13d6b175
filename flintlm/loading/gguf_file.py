"""The GGUF container: metadata, tensor table and raw tensor bytes, read through one mmap.

NOTE: `gguf.GGUFReader` builds a numpy view per array element and takes ~1.9 s on the embedded
model's 98k vocabulary strings, which alone would break the < 2 s load budget. This parser walks
the same layout with `struct` (~0.1 s). It knows nothing of model architectures or tensor names.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from flintlm.loading.checkpoint import ModelLoadError

if TYPE_CHECKING:
    import torch

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # v1 used 32-bit counts; no maintained tool writes it
_DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format of the fixed-size ones (8 = string, 9 = array).
_SCALAR_FORMATS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (slowest dim first); GGUF stores the reverse
    ggml_type: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """An open GGUF file. Metadata is parsed eagerly; tensor bytes stay in the mmap until asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                # ACCESS_COPY gives a writable (copy-on-write) buffer, so torch can wrap it without
                # a warning; nothing is ever written back to the file.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError as e:
            raise ModelLoadError(path, "no such file") from e
        except (OSError, ValueError) as e:  # ValueError: empty file cannot be mapped
            raise ModelLoadError(path, f"cannot read file ({e})") from e
        try:
            self.metadata, self.tensors = self._parse()
        except (struct.error, IndexError, UnicodeDecodeError) as e:
            raise ModelLoadError(path, f"truncated or corrupt GGUF header ({e})") from e

    def raw(self, name: str) -> torch.Tensor:
        """The stored bytes of tensor `name`: a uint8 view into the mmap, no copy."""
        import torch  # here, so reading only the metadata (a tokenizer) does not load torch

        info = self.tensors[name]
        return torch.frombuffer(self._map, dtype=torch.uint8, count=info.nbytes, offset=info.offset)

    def _parse(self) -> tuple[dict[str, Any], dict[str, GGUFTensorInfo]]:
        buf = self._map
        if buf[:4] != _MAGIC:
            raise ModelLoadError(self.path, "not a GGUF file (bad magic bytes)")
        version, num_tensors, num_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in _VERSIONS:
            raise ModelLoadError(self.path, f"unsupported GGUF version {version}")
        pos = 24
        metadata: dict[str, Any] = {}
        for _ in range(num_kv):
            key, pos = self._string(pos)
            (value_type,) = struct.unpack_from("<I", buf, pos)
            metadata[key], pos = self._value(value_type, pos + 4)

        entries = []
        for _ in range(num_tensors):
            name, pos = self._string(pos)
            (num_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{num_dims}Q", buf, pos + 4)
            type_id, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * num_dims)
            pos += 4 + 8 * num_dims + 12
            entries.append((name, tuple(reversed(dims)), type_id, offset))

        alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-pos // alignment) * alignment
        tensors = {}
        for name, shape, type_id, offset in entries:
            info = self._tensor_info(name, shape, type_id, data_start + offset)
            tensors[name] = info
        return metadata, tensors

    def _tensor_info(
        self, name: str, shape: tuple[int, ...], type_id: int, offset: int
    ) -> GGUFTensorInfo:
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError as e:
            raise ModelLoadError(self.path, f"tensor {name} has unknown ggml type {type_id}") from e
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        num_elements = 1
        for dim in shape:
            num_elements *= dim
        if shape and shape[-1] % block_size:
            raise ModelLoadError(
                self.path, f"tensor {name} row of {shape[-1]} is not a multiple of {block_size}"
            )
        nbytes = num_elements // block_size * type_size
        if offset + nbytes > len(self._map):
            raise ModelLoadError(self.path, f"truncated: tensor {name} runs past the end of file")
        return GGUFTensorInfo(name, shape, ggml_type, offset, nbytes)

    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._map, pos)
        end = pos + 8 + length
        if end > len(self._map):
            raise IndexError("string runs past the end of file")
        return self._map[pos + 8 : end].decode("utf-8"), end

    def _value(self, value_type: int, pos: int) -> tuple[Any, int]:
        if value_type == _STRING:
            return self._string(pos)
        if value_type == _ARRAY:
            item_type, count = struct.unpack_from("<IQ", self._map, pos)
            pos += 12
            if item_type in _SCALAR_FORMATS:
                fmt = f"<{count}{_SCALAR_FORMATS[item_type]}"
                return list(struct.unpack_from(fmt, self._map, pos)), pos + struct.calcsize(fmt)
            items = []
            read = self._string if item_type == _STRING else None
            for _ in range(count):  # strings (the vocabulary, the merges) or nested arrays
                item, pos = read(pos) if read else self._value(item_type, pos)
                items.append(item)
            return items, pos
        if value_type in _SCALAR_FORMATS:
            fmt = "<" + _SCALAR_FORMATS[value_type]
            return struct.unpack_from(fmt, self._map, pos)[0], pos + struct.calcsize(fmt)
        raise ModelLoadError(self.path, f"unknown GGUF metadata value type {value_type}")
