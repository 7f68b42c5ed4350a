"""What vLLM says about itself at start-up: weights, KV cache and memory budget, read from its log.

vLLM publishes no metric for its weights or its memory budget; they are only in the start-up log, in
formats that changed from 0.3 to today (``docs/reference/vllm-memory.md`` §2). This module reads every
documented format under any line prefix: vLLM's own (``INFO mm-dd hh:mm:ss [file.py:N]``), process tags
(``(VllmWorkerProcess pid=…)``, ``(RayWorkerWrapper pid=…, ip=…)``, ``(EngineCore_DP0 pid=…)``), ANSI
colours, container-log prefixes (``svc-1  | ``, Kubernetes/CRI ``<time> stdout F``, ``--timestamps``) and
structured ``level=INFO … msg="…"`` or JSON logging.

Sizes are GiB (2^30 bytes) even where the text says "GB". With tensor or pipeline parallelism every worker
prints its own lines; block and token counts are the minimum over them (vLLM uses the minimum), per-GPU
sizes the largest, and the facts say in ``notes`` where ranks disagree.

The scan is line by line and examines at most ``LINE_CAP`` characters of a line, so a 100 MB log or a
10 MB line costs time linear in its size and memory bounded by the cap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn, TextIO

from common import envflags
from common.tables import table
from common.units import GiB, MiB, gib

LINE_CAP = 64 * 1024  # characters of one line examined; the rest of a longer line is skipped

_UNIT_BYTES = {"GiB": GiB, "GB": GiB, "MiB": MiB, "MB": MiB}  # vLLM's "GB" means GiB
_NUM = r"(-?\d{1,15}(?:\.\d{1,12})?(?:[eE][-+]?\d{1,3})?)"
_UNIT = r"\s?(GiB|GB|MiB|MB)"
_COUNT = r"(\d[\d,]{0,30})"  # an integer, maybe with thousands separators

# --- wrappers around vLLM's own line -------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]{0,32}[ -/]{0,4}[@-~]|\x1b[@-Z\\-_]")
_CRI = re.compile(r"\d{4}-\d\d-\d\dT[\d:.,]{1,40}(?:Z|[+-]\d\d:?\d\d)? (stdout|stderr) ([PF])(?: |$)")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?\s+")
_COMPOSE = re.compile(r"([A-Za-z0-9][\w.-]{0,127})\s*\| ?")
_LOGFMT_LEVEL = re.compile(r"(?:^|\s)(?:level|lvl|severity)=")
_LOGFMT_MSG = re.compile(r'(?:^|\s)msg=(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|(\S*))')  # possessive: linear
_LOGFMT_PID = re.compile(r"(?:^|\s)(?:pid|process)=(\d{1,10})\b")
_LOGFMT_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_TAG = re.compile(r"\(([A-Za-z_][\w.\- =]{0,80}?)\s*pid=(\d{1,10})(?:,\s*ip=([^)\s]{1,64}))?\)")
_TAG_WINDOW = 200  # characters at the start of a line searched for a process tag

# --- what vLLM says --------------------------------------------------------------------------------
_WEIGHTS = re.compile(r"(?:Loading model weights|Model loading) took " + _NUM + _UNIT)
_BLOCKS = re.compile(r"#\s?([A-Za-z][\w]{0,15}) blocks:\s*(\d{1,20})")
_OVERRIDE = re.compile(r"Overriding num_gpu_blocks=(\d{1,20}) with num_gpu_blocks_override=(\d{1,20})")
_BUDGET_TOTAL = re.compile(r"total_gpu_memory \(" + _NUM + _UNIT + r"\) x gpu_memory_utilization \(" + _NUM + r"\)")
_BUDGET_WEIGHTS = re.compile(r"model weights take " + _NUM + _UNIT)
_BUDGET_NON_TORCH = re.compile(r"non_torch_memory takes " + _NUM + _UNIT)
_BUDGET_ACTIVATION = re.compile(r"activation peak memory takes " + _NUM + _UNIT)
_BUDGET_KV = re.compile(r"reserved for KV Cache is " + _NUM + _UNIT)
_PROFILE_RESULTS = re.compile(r"Memory profiling results?:")
_KEY_VALUE = re.compile(r"\b([a-z_]{1,40})=" + _NUM + r"\s?(GiB|GB|MiB|MB)?")
_AVAILABLE_KV = re.compile(r"Available KV cache memory:\s*" + _NUM + _UNIT)
_KV_TOKENS = re.compile(r"\b([A-Za-z]{2,10}) KV cache size:\s*" + _COUNT + r"\s*tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for " + _COUNT + r" tokens per request:\s*" + _NUM + r"\s?x")
_DEBUG_NON_TORCH = re.compile(r"non-torch forward increase memory:\s*" + _NUM + _UNIT)
_DEBUG_ACTIVATION = re.compile(r"torch peak memory increase:\s*" + _NUM + _UNIT)
_DEBUG_WEIGHTS = re.compile(r"weights memory:\s*" + _NUM + _UNIT)
_CPU_KV_SET = re.compile(r"(?:Explicitly|Auto) set \(" + _NUM + r"\s?/\s?" + _NUM + r"\)\s?(GiB|GB) for KV cache")
_GRAPH_TOOK = re.compile(r"Graph capturing finished in " + _NUM + r"\s?secs?, took " + _NUM + _UNIT)
_GRAPH_ESTIMATE = re.compile(r"Estimated CUDA graph memory:\s*" + _NUM + _UNIT)
_GRAPH_POOL = re.compile(r"CUDA graph pool memory:\s*" + _NUM + _UNIT + r"\s?\(actual\)")
_UTILIZATION_ARG = re.compile(r"""\bgpu_memory_utilization['"]?\s?[:=]\s?""" + _NUM)
_BLOCK_SIZE = re.compile(
    r"""['"]block_size['"]:\s?(\d{1,6})\b|(?<![\w.])block_size=(\d{1,6})\b|attention block size to (\d{1,6}) tokens"""
)
_VERSION_FIELD = re.compile(r"""\bvllm_version['"]?\s?[=:]\s?['"]?v?(\d[\w.+-]{0,40})""")
_VERSIONS = (  # (pattern, characters of the line searched)
    (re.compile(r"vLLM API server version v?(\d[\w.+-]{0,40})"), LINE_CAP),
    (re.compile(r"Starting vLLM API server\b.{0,200}?\bversion[\s=:]{1,3}v?(\d[\w.+-]{0,40})"), LINE_CAP),
    (re.compile(r"Initializing an? (?:V\d )?LLM engine \(v(\d[\w.+-]{0,40})\)"), LINE_CAP),
    (_VERSION_FIELD, LINE_CAP),
    (re.compile(r"[█▀▄].{0,80}\bversion\s{1,4}v?(\d+\.\d[\w.+-]{0,40})"), 400),  # the ASCII-art banner
)
# A line is examined further only if it holds one of these (plain substring tests are cheap).
_KEYWORDS = (
    "took",
    "blocks",
    "KV ",
    "emory",
    "concurrency",
    "raph",
    "version",
    "LLM engine",
    "gpu_memory_utilization",
    "block_size",
    "block size",
)
_FIELDS_PER_RANK = ("weights", "non_torch", "activation", "graph", "total", "available_kv")


class VllmLogError(ValueError):
    """The log could not be read, or holds no vLLM memory line at all; the message names the file."""


@dataclass(frozen=True)
class VllmLogFacts:
    """What one vLLM server's log says about its memory. A figure the log does not give is None."""

    vllm_version: str | None
    weights_bytes: int | None  # per GPU, the largest over ranks
    kv_cache_bytes: int | None  # per GPU, what vLLM allocated for the KV cache
    kv_cache_tokens: int | None  # tokens the KV cache holds (minimum over ranks)
    num_gpu_blocks: int | None  # blocks (minimum over ranks)
    max_concurrency: float | None  # requests of max_concurrency_tokens tokens that fit at once
    max_concurrency_tokens: int | None  # the "for N tokens per request"
    gpu_memory_utilization: float | None  # fraction 0..1
    total_gpu_memory_bytes: int | None  # the GPU's memory as vLLM's profiler saw it
    non_torch_bytes: int | None  # CUDA context, NCCL and other memory outside PyTorch's allocator
    activation_peak_bytes: int | None  # PyTorch's activation peak during profiling
    cuda_graph_bytes: int | None  # memory the captured CUDA graphs hold
    block_size: int | None  # tokens per KV block, when the log states it
    ranks: int  # worker processes that printed per-GPU memory lines (at least 1)
    notes: tuple[str, ...]  # where a figure was derived or ranks disagree

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, None as null (never 0), notes as a list."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["notes"] = list(self.notes)
        return out


# --- reading lines ---------------------------------------------------------------------------------


def _segments(line: str) -> Iterator[str]:
    """A line split on bare carriage returns (progress bars), each capped."""
    line = line.rstrip("\r\n")
    if "\r" not in line:
        yield line
        return
    for part in line.split("\r"):
        if part:
            yield part[:LINE_CAP]


def _text_lines(text: str) -> Iterator[str]:
    """The lines of ``text``, each cut to ``LINE_CAP`` characters, without copying the rest."""
    pos, size = 0, len(text)
    while pos < size:
        newline = text.find("\n", pos)
        end = size if newline < 0 else newline
        yield from _segments(text[pos : min(end, pos + LINE_CAP)])
        pos = end + 1


def _file_lines(stream: TextIO) -> Iterator[str]:
    """The lines of an open text file, each cut to ``LINE_CAP`` characters; an overlong rest is skipped."""
    while True:
        chunk = stream.readline(LINE_CAP)
        if not chunk:
            return
        complete = chunk.endswith(("\n", "\r"))
        yield from _segments(chunk)
        while not complete:
            rest = stream.readline(LINE_CAP)
            if not rest:
                return
            complete = rest.endswith(("\n", "\r"))


def _join_cri(lines: Iterable[str]) -> Iterator[str]:
    """Kubernetes CRI log lines (``<time> stdout P|F <text>``) unwrapped, each stream's partial (P) lines
    joined up to ``LINE_CAP``; other lines pass unchanged."""
    pending: dict[str, list[str]] = {}  # stream -> parts of its unfinished line
    length: dict[str, int] = {}  # stream -> characters in those parts
    for line in lines:
        match = _CRI.match(line) if line[:1].isdigit() else None
        if match is None:
            yield line
            continue
        stream, tag = match.group(1), match.group(2)
        room = LINE_CAP - length.get(stream, 0)
        part = line[match.end() : match.end() + max(room, 0)]
        if part:
            pending.setdefault(stream, []).append(part)
            length[stream] = length.get(stream, 0) + len(part)
        if tag == "F":
            yield "".join(pending.pop(stream, []))
            length.pop(stream, None)
    for parts in pending.values():
        yield "".join(parts)


def _unescape(text: str) -> str:
    return _LOGFMT_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def _unwrap(line: str) -> tuple[str, str]:
    """vLLM's own text of a log line and the identity of the process that printed it."""
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    container = ""
    for _ in range(4):
        match = _ISO_TIME.match(line) if line[:1].isdigit() else None
        if match is None and "|" in line[:140]:
            match = _COMPOSE.match(line)
            if match is not None:
                container = match.group(1)
        if match is None:
            break
        line = line[match.end() :]
    pid = ""
    stripped = line.lstrip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            message = record.get("msg", record.get("message"))
            if isinstance(message, str):
                pid = str(record.get("pid", record.get("process", "")))
                version = record.get("vllm_version")
                line = message if not isinstance(version, str) else f"{message} vllm_version={version}"
    elif "msg=" in line and _LOGFMT_LEVEL.search(line):
        match = _LOGFMT_MSG.search(line)
        if match is not None:
            pid_match = _LOGFMT_PID.search(line[: match.start()]) or _LOGFMT_PID.search(line[match.end() :])
            pid = pid_match.group(1) if pid_match else ""
            version = _VERSION_FIELD.search(line)
            message = _unescape(match.group(1)) if match.group(1) is not None else match.group(2)
            line = message if version is None else f"{message} vllm_version={version.group(1)}"
    tag = _TAG.search(line, 0, _TAG_WINDOW) if "pid=" in line[:_TAG_WINDOW] else None
    if tag is not None:
        return line, f"{container}/{tag.group(3) or ''}/{tag.group(2)}"
    return line, f"{container}//{pid}"


# --- the scan --------------------------------------------------------------------------------------


def _bytes(number: str, unit: str | None) -> float | None:
    value = float(number) * _UNIT_BYTES.get(unit or "GiB", GiB)
    return value if math.isfinite(value) else None


def _count(text: str) -> int:
    return int(text.replace(",", "") or "0")


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


class _Scan:
    """Everything seen so far; ``facts()`` turns it into a VllmLogFacts."""

    def __init__(self) -> None:
        self.found = False
        self.version: str | None = None
        self.per_rank: dict[str, dict[str, tuple[int, float]]] = {name: {} for name in _FIELDS_PER_RANK}
        self.peak_torch: dict[str, float] = {}  # 0.6.4's peak_torch_memory, which includes weights
        self.tokens: list[int] = []
        self.blocks: list[int] = []
        self.override: tuple[int, int] | None = None
        self.concurrency: list[float] = []
        self.concurrency_tokens: int | None = None
        self.utilization: tuple[int, float] | None = None
        self.block_size: int | None = None
        self.cpu_kv = False

    def rank(self, name: str, process: str, value: float | None, priority: int = 1) -> None:
        """A per-GPU figure from one process; a more trusted source (higher priority) is kept."""
        if value is None:
            return
        self.found = True
        seen = self.per_rank[name].get(process)
        if seen is None or priority >= seen[0]:
            self.per_rank[name][process] = (priority, value)

    def set_utilization(self, value: float | None, priority: int) -> None:
        if value is not None and (self.utilization is None or priority >= self.utilization[0]):
            self.utilization = (priority, value)

    def line(self, text: str, process: str) -> None:
        """Read one unwrapped line."""
        if self.version is None and ("version" in text or "LLM engine" in text):
            for pattern, window in _VERSIONS:
                match = pattern.search(text, 0, window)
                if match is not None:
                    self.version = match.group(1).rstrip(".-+,")
                    break
        if "took" in text:
            if (match := _WEIGHTS.search(text)) is not None:
                self.rank("weights", process, _bytes(match.group(1), match.group(2)), 3)
            if (match := _GRAPH_TOOK.search(text)) is not None:
                self.rank("graph", process, _bytes(match.group(2), match.group(3)), 2)
        if "blocks" in text:
            self._blocks(text)
        if "KV " in text:
            self._kv(text, process)
        if "emory" in text:
            self._memory(text, process)
        if "concurrency" in text and (match := _CONCURRENCY.search(text)) is not None:
            value = _finite(match.group(2))
            if value is not None:
                self.found = True
                self.concurrency.append(value)
                self.concurrency_tokens = _count(match.group(1))
        if "gpu_memory_utilization" in text and (match := _UTILIZATION_ARG.search(text)) is not None:
            self.set_utilization(_finite(match.group(1)), 1)
        if ("block_size" in text or "block size" in text) and (match := _BLOCK_SIZE.search(text)) is not None:
            self.block_size = int(next(g for g in match.groups() if g is not None))

    def _blocks(self, text: str) -> None:
        if (match := _OVERRIDE.search(text)) is not None:
            self.found = True
            self.override = (int(match.group(1)), int(match.group(2)))
            return
        cpu_alone: int | None = None
        for match in _BLOCKS.finditer(text):
            device, count = match.group(1), int(match.group(2))
            if device.upper() != "CPU":
                self.found = True
                self.blocks.append(count)
                return
            if not text[: match.start()].rstrip().endswith(","):
                cpu_alone = count  # the CPU build's "# CPU blocks: N" is its KV cache
        if cpu_alone is not None:
            self.found = True
            self.cpu_kv = True
            self.blocks.append(cpu_alone)

    def _kv(self, text: str, process: str) -> None:
        if (match := _KV_TOKENS.search(text)) is not None:
            self.found = True
            self.tokens.append(_count(match.group(2)))
            self.cpu_kv = self.cpu_kv or match.group(1) == "CPU"
        if (match := _CPU_KV_SET.search(text)) is not None:
            self.cpu_kv = True
            self.rank("available_kv", process, _bytes(match.group(1), match.group(3)), 2)

    def _memory(self, text: str, process: str) -> None:
        if (match := _AVAILABLE_KV.search(text)) is not None:
            self.rank("available_kv", process, _bytes(match.group(1), match.group(2)), 3)
        if (match := _BUDGET_TOTAL.search(text)) is not None:
            self.rank("total", process, _bytes(match.group(1), match.group(2)))
            self.set_utilization(_finite(match.group(3)), 2)
        for pattern, name, priority in (
            (_BUDGET_WEIGHTS, "weights", 1),
            (_BUDGET_NON_TORCH, "non_torch", 1),
            (_BUDGET_ACTIVATION, "activation", 1),
            (_BUDGET_KV, "available_kv", 2),
            (_DEBUG_WEIGHTS, "weights", 1),
            (_DEBUG_NON_TORCH, "non_torch", 1),
            (_DEBUG_ACTIVATION, "activation", 1),
        ):
            if (match := pattern.search(text)) is not None:
                self.rank(name, process, _bytes(match.group(1), match.group(2)), priority)
        if (match := _PROFILE_RESULTS.search(text)) is not None:
            self._profile_results(text[match.end() :], process)
        if "raph" in text:
            if (match := _GRAPH_POOL.search(text)) is not None:
                self.rank("graph", process, _bytes(match.group(1), match.group(2)), 3)
            if (match := _GRAPH_ESTIMATE.search(text)) is not None:
                self.rank("graph", process, _bytes(match.group(1), match.group(2)), 1)

    def _profile_results(self, text: str, process: str) -> None:
        """0.6.4's one-line ``Memory profiling results: key=valueGiB …``."""
        values: dict[str, tuple[str, str | None]] = {}
        for match in _KEY_VALUE.finditer(text):
            values.setdefault(match.group(1), (match.group(2), match.group(3)))
        for key, name in (("total_gpu_memory", "total"), ("non_torch_memory", "non_torch")):
            if key in values:
                self.rank(name, process, _bytes(*values[key]))
        if "kv_cache_size" in values:
            self.rank("available_kv", process, _bytes(*values["kv_cache_size"]), 2)
        if "peak_torch_memory" in values:
            peak = _bytes(*values["peak_torch_memory"])
            if peak is not None:
                self.found = True
                self.peak_torch[process] = peak
        if "gpu_memory_utilization" in values:
            self.set_utilization(_finite(values["gpu_memory_utilization"][0]), 2)

    # --- summary ---

    def _largest(self, name: str, label: str, notes: list[str]) -> int | None:
        values = [v for _, v in self.per_rank[name].values()]
        if not values:
            return None
        if len({round(v) for v in values}) > 1:
            notes.append(
                f"{label} differs by rank ({min(values) / GiB:.2f}-{gib(max(values))}); the largest is reported"
            )
        return round(max(values))

    def facts(self) -> VllmLogFacts:
        notes: list[str] = []
        ranks: set[str] = set(self.peak_torch)
        for per_process in self.per_rank.values():
            ranks.update(per_process)
        weights = self._largest("weights", "model weights", notes)
        for process, peak in self.peak_torch.items():  # 0.6.4: the peak includes the weights
            seen = self.per_rank["weights"].get(process)
            if seen is not None:
                self.rank("activation", process, peak - seen[1], 0)
        if self.peak_torch and not self.per_rank["activation"]:
            notes.append("peak_torch_memory includes the weights, which the log does not give: no activation peak")

        block_size = self.block_size
        blocks: int | None = min(self.blocks) if self.blocks else None
        if self.override is not None:
            blocks = self.override[1]
        tokens: int | None = min(self.tokens) if self.tokens else None
        if len(set(self.tokens)) > 1:
            notes.append(
                f"KV cache size differs by rank ({min(self.tokens):,}-{max(self.tokens):,} tokens); "
                "the minimum is what vLLM uses"
            )
        if len(set(self.blocks)) > 1:
            notes.append(
                f"block counts differ by rank ({min(self.blocks)}-{max(self.blocks)}); the minimum is what vLLM uses"
            )
        if tokens is None and blocks is not None and block_size:
            tokens = blocks * block_size
            notes.append("kv_cache_tokens = num_gpu_blocks x block_size")
        if blocks is None and tokens is not None and block_size and tokens % block_size == 0:
            blocks = tokens // block_size
            notes.append("num_gpu_blocks = kv_cache_tokens / block_size")

        kv_bytes = self._kv_bytes(notes)
        if kv_bytes is not None and kv_bytes < 0:
            notes.append("the KV cache memory is negative: the model and its activations do not fit")
        if self.cpu_kv:
            notes.append("CPU build: the KV cache is in host memory")
        utilization = self.utilization[1] if self.utilization is not None else None
        return VllmLogFacts(
            vllm_version=self.version,
            weights_bytes=weights,
            kv_cache_bytes=kv_bytes,
            kv_cache_tokens=tokens,
            num_gpu_blocks=blocks,
            max_concurrency=min(self.concurrency) if self.concurrency else None,
            max_concurrency_tokens=self.concurrency_tokens,
            gpu_memory_utilization=utilization,
            total_gpu_memory_bytes=self._largest("total", "total GPU memory", notes),
            non_torch_bytes=self._largest("non_torch", "non-torch memory", notes),
            activation_peak_bytes=self._largest("activation", "activation peak", notes),
            cuda_graph_bytes=self._largest("graph", "CUDA graph memory", notes),
            block_size=block_size,
            ranks=max(1, len(ranks)),
            notes=tuple(notes),
        )

    def _kv_bytes(self, notes: list[str]) -> int | None:
        """Allocated KV bytes per GPU: from blocks or tokens x page bytes where the log allows, else the
        "Available KV cache memory" (the smallest over ranks: it sets the block count)."""
        available = sorted(v for _, v in self.per_rank["available_kv"].values())
        if not available:
            return None
        if self.override is not None:
            before, after = self.override
            if before > 0:
                notes.append(
                    f"num_gpu_blocks overridden ({before} -> {after}); kv_cache_bytes = {after} blocks x "
                    "page bytes (available memory / blocks before the override)"
                )
                return round(after * available[0] / before)
            notes.append("num_gpu_blocks overridden from 0: kv_cache_bytes is the available memory, not the override")
        if len({round(v) for v in available}) <= 1:
            return round(available[0])
        spread = f"({available[0] / GiB:.2f}-{gib(available[-1])})"
        for counts, unit in ((self.tokens, "tokens"), (self.blocks, "blocks")):
            if len(counts) == len(available) and len(set(counts)) > 1 and max(counts) > 0:
                per_unit = available[-1] / max(counts)  # the largest rank: the least rounding
                notes.append(
                    f"Available KV cache memory differs by rank {spread}; kv_cache_bytes from {unit} "
                    f"(the smallest rank's {min(counts):,} {unit} x {per_unit:,.0f} B)"
                )
                return round(min(counts) * per_unit)
        notes.append(
            f"Available KV cache memory differs by rank {spread}; kv_cache_bytes is the smallest, "
            "which sets the block count"
        )
        return round(available[0])


def _scan(lines: Iterable[str], source: str) -> VllmLogFacts:
    scan = _Scan()
    for raw in _join_cri(lines):
        line = _ANSI.sub("", raw) if "\x1b" in raw else raw
        if not any(keyword in line for keyword in _KEYWORDS):
            continue
        text, process = _unwrap(line)
        if text is not line and not any(keyword in text for keyword in _KEYWORDS):
            continue
        scan.line(text, process)
    if not scan.found:
        raise VllmLogError(f"{source}: no vLLM memory line (weights, KV cache, blocks or memory profile)")
    return scan.facts()


def parse_log(text: str, source: str = "<log>") -> VllmLogFacts:
    """The memory facts of a vLLM start-up log; VllmLogError names ``source`` if there are none."""
    return _scan(_text_lines(text), source)


def parse_file(path: str | os.PathLike[str]) -> VllmLogFacts:
    """``parse_log`` on a file, read line by line (``-`` reads standard input)."""
    name = os.fspath(path)
    try:
        if name == "-":
            return _scan(_file_lines(sys.stdin), "<stdin>")
        with open(name, encoding="utf-8", errors="replace", newline="") as stream:
            return _scan(_file_lines(stream), name)
    except OSError as exc:
        raise VllmLogError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # standard input in a strict encoding
        raise VllmLogError(f"{name}: not text: {exc}") from exc


# --- command line ----------------------------------------------------------------------------------

_SIZES = (
    ("weights", "weights_bytes"),
    ("KV cache", "kv_cache_bytes"),
    ("total GPU memory", "total_gpu_memory_bytes"),
    ("non-torch memory", "non_torch_bytes"),
    ("activation peak", "activation_peak_bytes"),
    ("CUDA graphs", "cuda_graph_bytes"),
)


def render_table(facts: VllmLogFacts, source: str) -> str:
    """The facts as a two-column table; "-" where the log does not say."""

    def show(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    rows: list[tuple[str, str]] = [("vLLM version", show(facts.vllm_version))]
    for label, name in _SIZES:
        value = getattr(facts, name)
        rows.append((label, "-" if value is None else f"{gib(value)} ({value:,} B)"))
    concurrency = "-"
    if facts.max_concurrency is not None:
        concurrency = f"{facts.max_concurrency:.2f}x"
        if facts.max_concurrency_tokens is not None:
            concurrency += f" at {facts.max_concurrency_tokens:,} tokens per request"
    rows += [
        ("KV cache tokens", show(facts.kv_cache_tokens)),
        ("KV blocks", show(facts.num_gpu_blocks)),
        ("block size (tokens)", show(facts.block_size)),
        ("max concurrency", concurrency),
        ("gpu_memory_utilization", show(facts.gpu_memory_utilization)),
        ("ranks", show(facts.ranks)),
    ]
    out = [f"vLLM memory facts from {source}"]
    out += [f"  {line}" for line in table(("fact", "value"), rows).splitlines()]
    out += [f"  note: {note}" for note in facts.notes]
    return "\n".join(out)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors, from a flag or a GPUATTR_* variable, as one line (``main`` prints it and exits 2)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="gpuattr vllm-log",
        description="What a vLLM server's start-up log says about its GPU memory (sizes in GiB = 2^30 B). Every "
        "flag is also an environment variable GPUATTR_<FLAG>.",
    )
    parser.add_argument("file", metavar="FILE", help="the vLLM server log; - reads standard input")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (absent figures are null)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``gpuattr vllm-log FILE [--json]``: the memory facts of a vLLM log; exit 2 naming the file on error."""
    parser = _build_parser()
    try:
        args = envflags.parse_args(parser, argv)
        facts = parse_file(args.file)
    except (_UsageError, VllmLogError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"source": args.file, **facts.to_json()}, indent=2))
    else:
        print(render_table(facts, args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
