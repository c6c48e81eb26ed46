"""NaN and Inf found from a tensor's bits, for every float dtype safetensors stores, without torch;
torch's own isfinite over every 8- and 16-bit pattern is the reference."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from loragate.adapters.numerics import non_finite_tensor
from loragate.adapters.safetensors_header import read_header

# (dtype, its width, a finite pattern, a NaN pattern, an Inf pattern or None)
PATTERNS = [
    ("F64", np.uint64, 0x3FF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0xFFF0_0000_0000_0000),
    ("F32", np.uint32, 0x3F80_0000, 0x7FC0_0000, 0x7F80_0000),
    ("F16", np.uint16, 0x3C00, 0x7E00, 0xFC00),
    ("BF16", np.uint16, 0x3F80, 0x7FC0, 0x7F80),
    ("F8_E5M2", np.uint8, 0x3C, 0x7E, 0xFC),
    ("F8_E4M3", np.uint8, 0x7E, 0xFF, None),  # 0x7E is 448, e4m3fn's largest: finite
]


def write_tensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Path:
    header: dict[str, object] = {}
    data = b""
    for name, (dtype, values) in tensors.items():
        raw = values.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": [len(values)],
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def check(path: Path) -> str | None:
    return non_finite_tensor(path, read_header(path))


@pytest.mark.parametrize(("dtype", "width", "finite", "nan", "inf"), PATTERNS)
def test_each_dtypes_nan_and_inf_are_found_and_named(
    tmp_path: Path, dtype: str, width: type[np.unsignedinteger], finite: int, nan: int, inf: int
) -> None:
    def tensor(*bits: int) -> tuple[str, np.ndarray]:
        return dtype, np.array(bits, dtype=width)

    assert check(write_tensors(tmp_path / "ok", {"w": tensor(finite, 0, finite)})) is None
    poisoned = {"fine": tensor(finite), "bad": tensor(finite, nan)}
    assert check(write_tensors(tmp_path / "nan", poisoned)) == "the tensor 'bad' holds NaN values"
    if inf is not None:
        poisoned = {"bad": tensor(inf, finite)}
        assert check(write_tensors(tmp_path / "inf", poisoned)) == (
            "the tensor 'bad' holds Inf values"
        )


def test_integer_tensors_are_not_floats(tmp_path: Path) -> None:
    every_bit = {"i": ("I32", np.array([-1, 0x7F80_0000], dtype=np.int32))}
    assert check(write_tensors(tmp_path / "int", every_bit)) is None


@pytest.mark.slow  # imports torch
@pytest.mark.parametrize(
    ("dtype", "width"),
    [("F16", np.uint16), ("BF16", np.uint16), ("F8_E5M2", np.uint8), ("F8_E4M3", np.uint8)],
)
def test_every_pattern_agrees_with_torch(
    tmp_path: Path, dtype: str, width: type[np.unsignedinteger]
) -> None:
    import torch

    torch_dtype = {
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E4M3": torch.float8_e4m3fn,
    }[dtype]
    patterns = np.arange(np.iinfo(width).max + 1, dtype=np.uint64).astype(width)
    values = torch.from_numpy(patterns.view(np.uint8).copy()).view(torch_dtype).float().numpy()
    finite = patterns[np.isfinite(values)]
    assert check(write_tensors(tmp_path / "finite", {"w": (dtype, finite)})) is None
    for bits, value in zip(patterns.tolist(), values.tolist(), strict=True):
        if np.isfinite(value):
            continue
        kind = "NaN" if np.isnan(value) else "Inf"
        path = write_tensors(tmp_path / "one", {"w": (dtype, np.array([0, bits], dtype=width))})
        assert check(path) == f"the tensor 'w' holds {kind} values", hex(bits)
