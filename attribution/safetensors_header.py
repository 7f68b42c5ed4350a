"""Read the JSON header of a ``.safetensors`` file, and only the header, to size its tensors exactly.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the tensor
bytes, whose offsets count from the end of the header. This module reads the length, checks it against
a bound and the file size *before* reading, parses the JSON and checks every entry (known dtype,
non-negative integer shape, offsets that tile the data region in order with no gap or overlap, and
``end - begin == numel × dtype size``). It never reads tensor data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 2**20  # bytes; the reference implementation refuses larger headers too
LENGTH_PREFIX_BYTES = 8  # bytes: the little-endian u64 header length

# Bits per element, as named in safetensors' ``Dtype``.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
}


class SafetensorsHeaderError(ValueError):
    """A safetensors file (or index) whose header cannot be trusted; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as its header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # bytes from the start of the data region
    end: int  # bytes from the start of the data region, exclusive

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one file."""

    path: Path
    header_bytes: int  # bytes of JSON after the 8-byte length
    data_bytes: int  # bytes of the data region (file size − 8 − header_bytes)
    tensors: tuple[TensorEntry, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def tensor_bytes(self) -> int:
        """Sum of numel × dtype size over the tensors, in bytes."""
        return sum(t.nbytes for t in self.tensors)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _entry(path: Path, name: str, raw: Any) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(raw, dict):
        raise SafetensorsHeaderError(f"{where}: entry is not an object")
    dtype = raw.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsHeaderError(f"{where}: unknown dtype {dtype!r}")
    shape_raw = raw.get("shape")
    if not isinstance(shape_raw, list):
        raise SafetensorsHeaderError(f"{where}: shape is not a list: {shape_raw!r}")
    shape: list[int] = []
    for dim in shape_raw:
        value = _int(dim)
        if value is None:
            raise SafetensorsHeaderError(f"{where}: shape {shape_raw!r} has a non-integer or negative dimension")
        shape.append(value)
    offsets = raw.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise SafetensorsHeaderError(f"{where}: data_offsets is not [begin, end]: {offsets!r}")
    begin, end = _int(offsets[0]), _int(offsets[1])
    if begin is None or end is None or end < begin:
        raise SafetensorsHeaderError(f"{where}: data_offsets {offsets!r} are negative, non-integer or reversed")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or end - begin != bits // 8:
        needed = f"{bits / 8:g}" if bits.bit_length() < 1000 else str(bits // 8)  # bits / 8 overflows a float
        raise SafetensorsHeaderError(
            f"{where}: data_offsets {offsets!r} span {end - begin} bytes but {dtype}{shape} needs {needed}"
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def read_header(path: str | Path, *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse and check the header of ``path`` without reading tensor data.

    Raises :class:`SafetensorsHeaderError` naming the file for an absurd or truncated length, a header
    that is not a JSON object, an unknown dtype, offsets that do not match the shapes, or offsets that
    overlap, leave gaps or run past the end of the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size  # bytes
            prefix = handle.read(LENGTH_PREFIX_BYTES)
            if len(prefix) < LENGTH_PREFIX_BYTES:
                raise SafetensorsHeaderError(f"{path}: {size} bytes, too short for the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > max_header_bytes:
                raise SafetensorsHeaderError(
                    f"{path}: header length {length} bytes exceeds the {max_header_bytes}-byte limit"
                )
            if LENGTH_PREFIX_BYTES + length > size:
                raise SafetensorsHeaderError(
                    f"{path}: header length {length} bytes runs past the end of the {size}-byte file (truncated?)"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise SafetensorsHeaderError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) != length:  # the file shrank while we read it
        raise SafetensorsHeaderError(f"{path}: header truncated: read {len(raw)} of {length} bytes")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, an int past the digits limit
        raise SafetensorsHeaderError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SafetensorsHeaderError(f"{path}: header is not a JSON object")

    metadata_raw = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise SafetensorsHeaderError(f"{path}: __metadata__ is not an object")
    metadata = {str(k): str(v) for k, v in metadata_raw.items()}

    tensors = sorted((_entry(path, name, raw) for name, raw in parsed.items()), key=lambda t: (t.begin, t.end))
    data_bytes = size - LENGTH_PREFIX_BYTES - length
    expected = 0
    for tensor in tensors:
        if tensor.begin != expected:
            what = "overlaps the previous tensor" if tensor.begin < expected else "leaves a gap before it"
            raise SafetensorsHeaderError(
                f"{path}: tensor {tensor.name!r} starts at byte {tensor.begin}, expected {expected}: offsets out of "
                f"order ({what})"
            )
        expected = tensor.end
    if expected > data_bytes:
        raise SafetensorsHeaderError(
            f"{path}: tensors need {expected} bytes of data but the file holds {data_bytes} after its header "
            "(truncated?)"
        )
    return SafetensorsHeader(
        path=path, header_bytes=length, data_bytes=data_bytes, tensors=tuple(tensors), metadata=metadata
    )


INDEX_NAME = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 2**20  # bytes; real indexes are well under 10 MiB


def _shard_from_index(model_dir: Path, index_path: Path) -> list[Path]:
    try:
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            raise SafetensorsHeaderError(f"{index_path}: larger than {MAX_INDEX_BYTES} bytes; not an index")
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SafetensorsHeaderError(f"{index_path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, an int past the digits limit
        raise SafetensorsHeaderError(f"{index_path}: not valid JSON: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SafetensorsHeaderError(f"{index_path}: no weight_map object")
    names = list(weight_map.values())
    for name in names:  # checked before dict.fromkeys below, which cannot hash a list
        if (
            not isinstance(name, str)
            or not name
            or "\0" in name
            or Path(name).is_absolute()
            or ".." in Path(name).parts
        ):
            raise SafetensorsHeaderError(f"{index_path}: weight_map names {name!r}, not a file inside {model_dir}")
    return [model_dir / name for name in dict.fromkeys(names)]


@dataclass(frozen=True)
class CheckpointHeaders:
    """Every shard header of one checkpoint directory, and how the shards were found."""

    model_dir: Path
    found_by: str  # "index" (model.safetensors.index.json) or "glob" (*.safetensors)
    headers: tuple[SafetensorsHeader, ...]
    skipped: tuple[Path, ...] = ()  # shards found but left out (duplicate consolidated.safetensors)

    @property
    def tensors(self) -> Iterable[TensorEntry]:
        """All tensors over all shards."""
        for header in self.headers:
            yield from header.tensors


def find_shards(model_dir: str | Path) -> CheckpointHeaders | None:
    """Read every shard header of ``model_dir``; ``None`` when it holds no safetensors file.

    With ``model.safetensors.index.json`` the shards are the files its ``weight_map`` names. Without
    one, every ``*.safetensors`` in the directory; ``consolidated*.safetensors`` (Mistral's second copy
    of the same weights) is left out when other shards are present.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SafetensorsHeaderError(f"{model_dir}: not a directory")
    index_path = model_dir / INDEX_NAME
    skipped: list[Path] = []
    if index_path.is_file():
        shards, found_by = _shard_from_index(model_dir, index_path), "index"
    else:
        shards = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
        others = [p for p in shards if not p.name.startswith("consolidated")]
        if others and len(others) != len(shards):
            skipped = [p for p in shards if p not in others]
            shards = others
        found_by = "glob"
    if not shards:
        return None
    headers = tuple(read_header(p) for p in shards)
    return CheckpointHeaders(model_dir=model_dir, found_by=found_by, headers=headers, skipped=tuple(skipped))
