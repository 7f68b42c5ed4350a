"""The safetensors header reader: exact bytes from headers only, and clear refusals of hostile headers."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from attribution.safetensors_header import (
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    SafetensorsHeaderError,
    find_shards,
    read_header,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "safetensors"
TINY = FIXTURES / "tiny-llama"

# The tiny Llama of fixtures/safetensors/tiny-llama: vocab 64, hidden 16, MLP 32, 2 layers, 4 heads, 2 KV heads.
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 4,
    "vocab_size": 64,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def tiny_llama_tensors(layers: range) -> dict[str, tuple[str, list[int]]]:
    """Names, dtypes and shapes of the tiny Llama's tensors for ``layers``."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for i in layers:
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": ("BF16", [16, 16]),
            p + "self_attn.k_proj.weight": ("BF16", [8, 16]),
            p + "self_attn.v_proj.weight": ("BF16", [8, 16]),
            p + "self_attn.o_proj.weight": ("BF16", [16, 16]),
            p + "mlp.gate_proj.weight": ("BF16", [32, 16]),
            p + "mlp.up_proj.weight": ("BF16", [32, 16]),
            p + "mlp.down_proj.weight": ("BF16", [16, 32]),
            p + "input_layernorm.weight": ("BF16", [16]),
            p + "post_attention_layernorm.weight": ("BF16", [16]),
        }
    return tensors


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    return math.prod(shape) * DTYPE_BITS[dtype] // 8


def write_safetensors(
    path: Path,
    tensors: Mapping[str, tuple[str, Sequence[int]]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """A real safetensors file: header, 8-byte-aligned padding, then zero-filled tensor bytes. Returns data bytes."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = tensor_bytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


def write_raw(path: Path, header: bytes, length: int | None = None, data: bytes = b"") -> Path:
    """A file with an arbitrary header and declared length, for hostile cases."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def build_tiny_llama(directory: Path) -> int:
    """The tiny Llama checkpoint in two shards with an index; returns its tensor bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    first = {"model.embed_tokens.weight": ("BF16", [64, 16])} | tiny_llama_tensors(range(1))
    second = tiny_llama_tensors(range(1, 2)) | {
        "model.norm.weight": ("BF16", [16]),
        "lm_head.weight": ("BF16", [64, 16]),
    }
    total = 0
    weight_map: dict[str, str] = {}
    for number, shard in enumerate((first, second), start=1):
        name = f"model-{number:05d}-of-00002.safetensors"
        total += write_safetensors(directory / name, shard, {"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    return total


TINY_BYTES = 13_472  # 6,736 bf16 parameters


def test_committed_tiny_llama_fixture_is_what_the_builder_writes(tmp_path: Path) -> None:
    assert build_tiny_llama(tmp_path / "tiny") == TINY_BYTES
    for path in sorted((tmp_path / "tiny").iterdir()):
        assert (TINY / path.name).read_bytes() == path.read_bytes(), path.name


def test_header_gives_every_tensor_its_exact_bytes_and_skips_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {
        "a": ("F32", [3, 5]),
        "b": ("BF16", [7]),
        "c": ("F8_E4M3", [2, 2, 2]),
        "d": ("I64", [1]),
        "e": ("BOOL", [3]),
        "f": ("F4", [4, 2]),
        "g": ("U8", [0, 9]),
    }
    data = write_safetensors(path, tensors, {"format": "pt"})
    header = read_header(path)
    assert {t.name: t.nbytes for t in header.tensors} == {
        "a": 60,
        "b": 14,
        "c": 8,
        "d": 8,
        "e": 3,
        "f": 4,
        "g": 0,
    }
    assert header.tensor_bytes == data == header.data_bytes == 97
    assert header.metadata == {"format": "pt"}
    assert "__metadata__" not in {t.name for t in header.tensors}
    assert next(t for t in header.tensors if t.name == "c").shape == (2, 2, 2)


def test_index_names_the_shards_and_their_bytes_sum_exactly() -> None:
    checkpoint = find_shards(TINY)
    assert checkpoint is not None
    assert checkpoint.found_by == "index"
    assert [h.path.name for h in checkpoint.headers] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert sum(t.nbytes for t in checkpoint.tensors) == TINY_BYTES
    assert len(list(checkpoint.tensors)) == 2 * 9 + 3


def test_shards_without_an_index_are_globbed_and_a_consolidated_copy_is_left_out(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [10])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [6])})
    write_safetensors(tmp_path / "consolidated.safetensors", {"a": ("BF16", [10]), "b": ("BF16", [6])})
    checkpoint = find_shards(tmp_path)
    assert checkpoint is not None
    assert checkpoint.found_by == "glob"
    assert sum(t.nbytes for t in checkpoint.tensors) == 32
    assert [p.name for p in checkpoint.skipped] == ["consolidated.safetensors"]


def test_a_directory_without_safetensors_has_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    assert find_shards(tmp_path) is None


def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsHeaderError, match="nope: not a directory"):
        find_shards(tmp_path / "nope")


def test_the_header_of_a_huge_tensor_is_read_without_reading_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    raw = json.dumps({"w": {"dtype": "BF16", "shape": [2**15, 2**15], "data_offsets": [0, 2**31]}}).encode()
    write_raw(path, raw)
    with path.open("r+b") as handle:
        handle.truncate(8 + len(raw) + 2**31)  # sparse: 2 GiB of tensor the reader must not touch
    tracemalloc.start()
    try:
        header = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.tensor_bytes == 2**31
    assert peak < 2**20


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (2**63, "exceeds the 104857600-byte limit"),
        (10 * 10**9, "exceeds the 104857600-byte limit"),
        (MAX_HEADER_BYTES, "runs past the end"),
        (4096, "runs past the end"),
    ],
)
def test_an_absurd_or_truncated_header_length_is_refused_before_allocating(
    tmp_path: Path, length: int, message: str
) -> None:
    path = write_raw(tmp_path / "evil.safetensors", b'{"a":1}', length=length)
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsHeaderError, match=message) as caught:
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value)
    assert peak < 2**20  # the claimed length was never allocated


def test_a_file_shorter_than_the_length_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x05\x00")
    with pytest.raises(SafetensorsHeaderError, match=r"short\.safetensors: 2 bytes, too short"):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"not json at all", "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
        (b'{"__metadata__": [1]}', "__metadata__ is not an object"),
        (b'{"w": 3}', "entry is not an object"),
        (b'{"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 1]}}', "unknown dtype 'Q4_K'"),
        (b'{"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}', "negative dimension"),
        (b'{"w": {"dtype": "U8", "shape": [true], "data_offsets": [0, 1]}}', "non-integer"),
        (b'{"w": {"dtype": "U8", "shape": "4", "data_offsets": [0, 4]}}', "shape is not a list"),
        (b'{"w": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}}', "negative, non-integer or reversed"),
        (b'{"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}}', "negative, non-integer or reversed"),
        (b'{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0]}}', r"not \[begin, end\]"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}', "span 4 bytes but F32"),
    ],
)
def test_a_malformed_header_is_refused_naming_the_file(tmp_path: Path, header: bytes, message: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, data=bytes(16))
    with pytest.raises(SafetensorsHeaderError, match=message) as caught:
        read_header(path)
    assert str(path) in str(caught.value)


def _entries(*spans: tuple[str, int, int]) -> bytes:
    return json.dumps(
        {name: {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]} for name, begin, end in spans}
    ).encode()


@pytest.mark.parametrize(
    ("spans", "data", "message"),
    [
        ((("a", 0, 8), ("b", 4, 12)), 12, "'b' starts at byte 4, expected 8: offsets out of order .overlaps"),
        ((("a", 0, 8), ("b", 8, 16), ("c", 0, 4)), 16, "starts at byte 0, expected 4: offsets out of order .overlaps"),
        ((("a", 0, 8), ("b", 10, 12)), 12, "'b' starts at byte 10, expected 8: offsets out of order .leaves a gap"),
        ((("a", 0, 8), ("b", 8, 16)), 12, "tensors need 16 bytes of data but the file holds 12"),
    ],
)
def test_overlapping_gapped_or_truncated_offsets_are_refused(
    tmp_path: Path, spans: tuple[tuple[str, int, int], ...], data: int, message: str
) -> None:
    path = write_raw(tmp_path / "o.safetensors", _entries(*spans), data=bytes(data))
    with pytest.raises(SafetensorsHeaderError, match=message):
        read_header(path)


def test_offsets_listed_out_of_file_order_but_contiguous_are_accepted(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "ok.safetensors", _entries(("z", 0, 8), ("a", 8, 12)), data=bytes(12))
    assert [t.name for t in read_header(path).tensors] == ["z", "a"]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"metadata": {}}', "no weight_map object"),
        ('{"weight_map": {"a": "../outside.safetensors"}}', "not a file inside"),
        ('{"weight_map": {"a": "/etc/passwd"}}', "not a file inside"),
        ('{"weight_map": {"a": "missing.safetensors"}}', r"missing\.safetensors: cannot read"),
    ],
)
def test_a_bad_index_is_refused_naming_it(tmp_path: Path, index: str, message: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(SafetensorsHeaderError, match=message):
        find_shards(tmp_path)


def test_a_bad_shard_named_by_the_index_is_refused_naming_the_shard(tmp_path: Path) -> None:
    build_tiny_llama(tmp_path)
    write_raw(tmp_path / "model-00002-of-00002.safetensors", b"garbage!")
    with pytest.raises(SafetensorsHeaderError, match=r"model-00002-of-00002\.safetensors: header is not valid"):
        find_shards(tmp_path)
