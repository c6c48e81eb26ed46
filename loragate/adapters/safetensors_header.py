"""Reading a safetensors file's header without loading its weights (and without torch).

The format: 8 bytes little-endian header length N, N bytes of JSON mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__"), then the data.
Checking the offsets against the file size finds truncated and corrupted files before the
engine tries to load them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from loragate.adapters.untrusted import UntrustedFileError, parse_json

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
# A LoRA's header lists a few hundred tensors in about 100 KB. The reference implementation
# allows 100 MB, which a hostile header can spend on millions of entries parsed into memory.
_MAX_HEADER_BYTES = 16 * 1024 * 1024


class BrokenSafetensorsError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    span: tuple[int, int]  # where its bytes lie in the file: [begin, end)


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Each tensor's dtype and shape; BrokenSafetensorsError says what is wrong with the file."""
    try:
        size, header_len, raw = _read_raw_header(path)
        header = parse_json(raw)
    except OSError as exc:
        raise BrokenSafetensorsError(f"it cannot be read ({exc.strerror})") from exc
    except UntrustedFileError as exc:
        raise BrokenSafetensorsError(f"the header {exc}") from exc
    if not isinstance(header, dict):
        raise BrokenSafetensorsError("the header is not a JSON object")
    data_len = size - 8 - header_len
    return {
        name: _tensor(name, entry, data_len, 8 + header_len)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _read_raw_header(path: Path) -> tuple[int, int, bytes]:
    """(file size, header length, header bytes), the length checked before anything is read."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise BrokenSafetensorsError(f"the file is {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise BrokenSafetensorsError(
                f"the header claims {header_len} bytes but the file has {size} (truncated?)"
            )
        if header_len > _MAX_HEADER_BYTES:
            raise BrokenSafetensorsError(
                f"the header claims {header_len} bytes, above the {_MAX_HEADER_BYTES} accepted"
            )
        return size, header_len, f.read(header_len)


def _tensor(name: str, entry: object, data_len: int, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not _well_formed(entry):
        raise BrokenSafetensorsError(f"tensor '{name}' has a malformed header entry")
    dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPE_BYTES:
        raise BrokenSafetensorsError(f"tensor '{name}' has an unknown dtype '{dtype}'")
    expected = math.prod(shape) * _DTYPE_BYTES[dtype]
    if not 0 <= begin <= end or end - begin != expected:
        raise BrokenSafetensorsError(
            f"tensor '{name}' ({dtype} {shape}) should span {expected} bytes, "
            f"its offsets say {end - begin}"
        )
    if end > data_len:
        raise BrokenSafetensorsError(
            f"tensor '{name}' ends at byte {end} of the data but the file holds only "
            f"{data_len} (truncated)"
        )
    return TensorInfo(dtype, tuple(shape), (data_start + begin, data_start + end))


def _well_formed(entry: dict[str, object]) -> bool:
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    return (
        isinstance(dtype, str)
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
    )
