"""What vLLM says about itself at start-up: weights, KV cache and memory budget, read from its log.

vLLM publishes no metric for its weights or its memory budget; they are only in the start-up log, in
formats that changed from 0.3 to today (``docs/reference/vllm-memory.md`` §2). This module reads every
documented format under any line prefix: vLLM's own (``INFO mm-dd hh:mm:ss [file.py:N]``), process tags
(``(VllmWorkerProcess pid=…)``, ``(RayWorkerWrapper pid=…, ip=…)``, ``(EngineCore_DP0 pid=…)``), ANSI
colours, container-log prefixes (``svc-1  | ``, Kubernetes/CRI ``<time> stdout F``, ``--timestamps``) and
structured ``level=INFO … msg="…"`` or JSON logging.

Sizes are GiB (2^30 bytes) even where the text says "GB". With tensor or pipeline parallelism every worker
prints its own lines (nested tags such as ``(EngineCore_0 pid=…) (RayWorkerWrapper pid=…)`` name one worker
by their chain); block and token counts are the minimum over them (vLLM uses the minimum), per-GPU sizes the
largest, and the facts say in ``notes`` where ranks disagree and, in ``limiting_worker``, which worker (or
pipeline stage) sets the block count where the log tells. ``workers`` keeps each worker's own figures and the
line each came from; ``sources`` every figure read, with its line (``--explain``).

A start-up that stops because the KV cache does not fit still prints its figures: the facts then carry
``failed_to_start`` and the ``--gpu-memory-utilization``, ``--max-model-len`` and ``--kv-cache-memory`` that
would have fitted, computed from them. A record wrapped over several lines (a pasted log) is read joined;
one whose prefix was stripped is read alone.

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
from dataclasses import dataclass, field, fields
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
_TAG_STAGE = re.compile(r"(?:^|_)PP(\d{1,4})")
_TAG_RANK = re.compile(r"(?:(?:^|_)TP|\brank=|-)(\d{1,4})\b")
# vLLM's own record start ("INFO mm-dd", a process tag): a keyword-free one may continue on the next line
_VLLM_START = re.compile(r"\s*\(\w{1,80}\b[^()]{0,80}pid=|\s*(?:INFO|WARNING|DEBUG|ERROR|CRITICAL) \d\d-\d\d ")
# The start of one log record (after the wrappers): a line without it may be the wrapped rest of the one before.
_RECORD_START = re.compile(
    r"\s*(?:\([^()]{0,120}pid=\d{1,10}[^()]{0,80}\)\s*){0,4}(?:INFO|WARNING|WARN|DEBUG|ERROR|CRITICAL)(?=[\s:])"
    r"|\s*\[?\d\d-\d\d \d\d:\d\d|\s*\(\w{1,80}\b[^()]{0,80}pid=|\s*Traceback|\s*\w{0,40}Error:"
)
_TAG_WINDOW = 200  # characters at the start of a line searched for a process tag

# --- what vLLM says --------------------------------------------------------------------------------
_WEIGHTS = re.compile(r"(?:Loading model weights|Model loading) took " + _NUM + _UNIT)
_BLOCKS = re.compile(r"#\s?([A-Za-z][\w]{0,15}) blocks:\s*(-?\d{1,20})")
_CACHE_CONFIG_BLOCKS = re.compile(r"cache_config_info with initialization after num_gpu_blocks is:\s*(-?\d{1,20})")
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
_UTILIZATION_ARG = re.compile(
    r"""(?:\bgpu_memory_utilization['"]?\s?[:=]\s?|--gpu-memory-utilization(?:=|\s{1,4}))""" + _NUM
)
_UTILIZATION_FROM = re.compile(r"gpu[-_]memory[-_]utilization`? from " + _NUM + r" to " + _NUM)
_UTILIZATION_CURRENT = re.compile(r"current --gpu-memory-utilization=" + _NUM)
_UTILIZATION_RAISE = re.compile(r"increase --gpu-memory-utilization to " + _NUM)
_RESERVED_KV = re.compile(r"reserved " + _NUM + _UNIT + r" (?:memory )?for KV Cache as specified by kv_cache_memory")
_KV_MEMORY_ARG = re.compile(r"""\bkv_cache_memory(?:_bytes)?['"]?\s?[:=]\s?[1-9]""")  # an args or config dump
_FREE_ON_DEVICE = re.compile(
    r"Free memory on device(?: [\w:]{1,20})? \(" + _NUM + r"(?:-" + _NUM + r")?\s?/\s?" + _NUM + _UNIT + r"\)"
)
_FAIL_FREE = re.compile(r"on startup is less than desired GPU memory utilization \(" + _NUM + r", " + _NUM + _UNIT)
_MAX_LEN = re.compile(r"""(?:\bmax_(?:seq|model)_len['"]?\s?[:=]\s?|--max-model-len(?:=|\s{1,4}))(\d{1,9})\b""")
# Start-up failures that still carry figures
_FAIL_NEEDED = re.compile(
    r"max seq len \((\d{1,9})\),\s?\(?" + _NUM + _UNIT + r" KV cache is needed, which is larger than the "
    r"available KV cache memory \(" + _NUM + _UNIT + r"\)"
)
_FAIL_ESTIMATE = re.compile(r"estimated maximum model length is (\d{1,9})")
_FAIL_TOKENS = re.compile(
    r"max seq len \((\d{1,9})\) is larger than the maximum number of tokens that can be stored in KV cache "
    r"\((-?\d{1,12})\)"
)
_FAIL_NO_MEMORY = "No available memory for the cache blocks"
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
    "gpu-memory-utilization",
    "max_seq_len",
    "max_model_len",
    "max-model-len",
    "max seq len",
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
    failed_to_start: str | None = None  # why vLLM stopped at start-up, when the log says so
    max_model_len: int | None = None  # the tokens of one request, from the arguments or a failure
    kv_cache_needed_bytes: int | None = None  # per GPU, what one max_model_len request needs (a failure's figure)
    suggested_gpu_memory_utilization: float | None = None  # the least that would make a failed start fit
    suggested_max_model_len: int | None = None  # the longest request that fits what was available
    suggested_kv_cache_memory_bytes: int | None = None  # --kv-cache-memory that holds one max_model_len request
    limiting_worker: str | None = None  # the worker whose figures set the block count, when the log tells
    workers: tuple[dict[str, Any], ...] = ()  # per worker: its figures and the line (number) each came from
    sources: tuple[dict[str, Any], ...] = field(default=(), compare=False)  # every figure read, with its line

    def to_json(self, sources: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: every field, None as null (never 0), notes as a list; ``sources`` (each figure's
        line) only when asked."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        out["notes"] = list(self.notes)
        out["workers"] = [dict(worker) for worker in self.workers]
        if sources:
            out["sources"] = [dict(source) for source in self.sources]
        return out


# --- reading lines ---------------------------------------------------------------------------------


def _segments(line: str, number: int) -> Iterator[tuple[int, str]]:
    """A line split on bare carriage returns (progress bars), each capped, with its line number."""
    line = line.rstrip("\r\n")
    if "\r" not in line:
        yield number, line
        return
    for part in line.split("\r"):
        if part:
            yield number, part[:LINE_CAP]


def _text_lines(text: str) -> Iterator[tuple[int, str]]:
    """The numbered lines of ``text``, each cut to ``LINE_CAP`` characters, without copying the rest."""
    pos, size, number = 0, len(text), 0
    while pos < size:
        number += 1
        newline = text.find("\n", pos)
        end = size if newline < 0 else newline
        yield from _segments(text[pos : min(end, pos + LINE_CAP)], number)
        pos = end + 1


def _file_lines(stream: TextIO) -> Iterator[tuple[int, str]]:
    """The numbered lines of an open text file, each cut to ``LINE_CAP`` characters; an overlong rest is
    skipped."""
    number = 0
    while True:
        chunk = stream.readline(LINE_CAP)
        if not chunk:
            return
        number += 1
        complete = chunk.endswith(("\n", "\r"))
        yield from _segments(chunk, number)
        while not complete:
            rest = stream.readline(LINE_CAP)
            if not rest:
                return
            complete = rest.endswith(("\n", "\r"))


def _join_cri(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Kubernetes CRI log lines (``<time> stdout P|F <text>``) unwrapped, each stream's partial (P) lines
    joined up to ``LINE_CAP`` (numbered by their first part); other lines pass unchanged."""
    pending: dict[str, list[str]] = {}  # stream -> parts of its unfinished line
    length: dict[str, int] = {}  # stream -> characters in those parts
    first: dict[str, int] = {}  # stream -> the line number of its first part
    for number, line in lines:
        match = _CRI.match(line) if line[:1].isdigit() else None
        if match is None:
            yield number, line
            continue
        stream, tag = match.group(1), match.group(2)
        room = LINE_CAP - length.get(stream, 0)
        part = line[match.end() : match.end() + max(room, 0)]
        first.setdefault(stream, number)
        if part:
            pending.setdefault(stream, []).append(part)
            length[stream] = length.get(stream, 0) + len(part)
        if tag == "F":
            yield first.pop(stream), "".join(pending.pop(stream, []))
            length.pop(stream, None)
    for stream, parts in pending.items():
        yield first.get(stream, 0), "".join(parts)


def _unescape(text: str) -> str:
    return _LOGFMT_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def _unwrap(line: str) -> tuple[str, str, str]:
    """vLLM's own text of a log line, the identity of the process that printed it and a label for it."""
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
    if "pid=" in line[:_TAG_WINDOW]:
        tags = list(_TAG.finditer(line, 0, _TAG_WINDOW))
        if tags:  # nested tags ("(EngineCore_0 pid=1) (RayWorkerWrapper pid=2)"): the chain is the process
            ip = next((tag.group(3) for tag in reversed(tags) if tag.group(3)), "")
            chain = ">".join(tag.group(2) for tag in tags)
            label = " > ".join(f"{tag.group(1).strip()} pid={tag.group(2)}" for tag in tags)
            label += f" ip={ip}" if ip else ""
            return line, f"{container}/{ip}/{chain}", f"{container}: {label}" if container else label
    label = ", ".join(part for part in (container, f"pid={pid}" if pid else "") if part)
    return line, f"{container}//{pid}", label or "(untagged lines)"


# --- the scan --------------------------------------------------------------------------------------


def _bytes(number: str, unit: str | None) -> float | None:
    value = float(number) * _UNIT_BYTES.get(unit or "GiB", GiB)
    return value if math.isfinite(value) else None


def _count(text: str) -> int:
    return int(text.replace(",", "") or "0")


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


# figures that describe a run but are no memory line: a log with only these is not a vLLM memory log
_CONTEXT_FIGURES = frozenset({"vllm_version", "gpu_memory_utilization", "block_size", "max_model_len"})
_WORKER_FIELDS = {  # per-rank figure -> its name in a worker's JSON
    "weights": "weights_bytes",
    "non_torch": "non_torch_bytes",
    "activation": "activation_peak_bytes",
    "graph": "cuda_graph_bytes",
    "total": "total_gpu_memory_bytes",
    "available_kv": "available_kv_cache_bytes",
}


class _Scan:
    """Everything seen so far; ``facts()`` turns it into a VllmLogFacts."""

    def __init__(self) -> None:
        self.found = False
        self.number = 0  # the line being read
        self.version: str | None = None
        self.version_line = 0
        self.per_rank: dict[str, dict[str, tuple[int, float, int]]] = {name: {} for name in _FIELDS_PER_RANK}
        self.labels: dict[str, str] = {}  # process -> how to name it
        self.peak_torch: dict[str, float] = {}  # 0.6.4's peak_torch_memory, which includes weights
        # counts keyed by (process, line) so that reading a wrapped line again changes nothing
        self.tokens: dict[tuple[str, int], int] = {}
        self.blocks: dict[tuple[str, int], int] = {}
        self.final_blocks: dict[tuple[str, int], int] = {}  # the API server's cache_config_info line
        self.concurrency: dict[tuple[str, int], float] = {}
        self.concurrency_tokens: int | None = None
        self.override: tuple[int, int] | None = None
        self.profiling_overrides = 0
        self.utilization: tuple[int, float] | None = None
        self.utilization_raise: float | None = None  # vLLM's own suggestion
        self.block_size: int | None = None
        self.max_len: int | None = None
        self.cpu_kv = False
        self.kv_specified = False
        self.free_total: float | None = None  # "Free memory on device (free/total GiB)"
        self.fail_needed: tuple[int, float, float] | None = None  # (max seq len, needed, available)
        self.fail_estimate: int | None = None
        self.fail_tokens: tuple[int, int] | None = None  # (max seq len, tokens that fit)
        self.fail_no_memory = False
        self.fail_free: tuple[float, float | None, float | None] | None = None  # (free, utilization, wanted)
        self.sources: dict[tuple[str, str, int], object] = {}  # (figure, process, line) -> value

    def _source(self, figure: str, process: str, value: object) -> None:
        self.found = self.found or figure not in _CONTEXT_FIGURES
        self.sources[(figure, process, self.number)] = value

    def rank(self, name: str, process: str, value: float | None, priority: int = 1) -> None:
        """A per-GPU figure from one process; a more trusted source (higher priority) is kept."""
        if value is None:
            return
        self._source(name, process, value)
        seen = self.per_rank[name].get(process)
        if seen is None or priority >= seen[0]:
            self.per_rank[name][process] = (priority, value, self.number)

    def set_utilization(self, value: float | None, priority: int, process: str) -> None:
        if value is None:
            return
        self._source("gpu_memory_utilization", process, value)
        if self.utilization is None or priority >= self.utilization[0]:
            self.utilization = (priority, value)

    def line(self, text: str, process: str) -> None:
        """Read one unwrapped line."""
        if (self.version is None or self.version_line == self.number) and ("version" in text or "LLM engine" in text):
            for pattern, window in _VERSIONS:
                match = pattern.search(text, 0, window)
                if match is not None:
                    self.version, self.version_line = match.group(1).rstrip(".-+,"), self.number
                    self._source("vllm_version", process, self.version)
                    break
        if "took" in text:
            if (match := _WEIGHTS.search(text)) is not None:
                self.rank("weights", process, _bytes(match.group(1), match.group(2)), 3)
            if (match := _GRAPH_TOOK.search(text)) is not None:
                self.rank("graph", process, _bytes(match.group(2), match.group(3)), 2)
        if "blocks" in text:
            self._blocks(text, process)
        if "KV " in text:
            self._kv(text, process)
        if "emory" in text:
            self._memory(text, process)
        if "max seq len" in text:
            self._failure(text, process)
        if "concurrency" in text and (match := _CONCURRENCY.search(text)) is not None:
            value = _finite(match.group(2))
            if value is not None:
                self._source("max_concurrency", process, value)
                self.concurrency[(process, self.number)] = value
                self.concurrency_tokens = _count(match.group(1))
        if "utilization" in text:
            self._utilization(text, process)
        if ("block_size" in text or "block size" in text) and (match := _BLOCK_SIZE.search(text)) is not None:
            self.block_size = int(next(g for g in match.groups() if g is not None))
            self._source("block_size", process, self.block_size)
        if ("max_" in text or "max-model-len" in text) and (match := _MAX_LEN.search(text)) is not None:
            self.max_len = int(match.group(1))
            self._source("max_model_len", process, self.max_len)

    def _utilization(self, text: str, process: str) -> None:
        if (match := _UTILIZATION_FROM.search(text)) is not None:  # "increase ... from 0.9000 to 0.9690"
            self.set_utilization(_finite(match.group(1)), 2, process)
            self.utilization_raise = _finite(match.group(2))
        elif (match := _UTILIZATION_CURRENT.search(text)) is not None:
            self.set_utilization(_finite(match.group(1)), 2, process)
            if (match := _UTILIZATION_RAISE.search(text)) is not None:
                self.utilization_raise = _finite(match.group(1))
        elif (match := _UTILIZATION_ARG.search(text)) is not None:
            self.set_utilization(_finite(match.group(1)), 1, process)

    def _blocks(self, text: str, process: str) -> None:
        if (match := _OVERRIDE.search(text)) is not None:
            before, after = int(match.group(1)), int(match.group(2))
            if before <= 0 and not self.per_rank["available_kv"] and not self.blocks:
                self.profiling_overrides += 1  # printed while CUDA graphs are profiled, before the budget
                return
            self._source("num_gpu_blocks", process, after)
            self.override = (before, after)
            return
        if (match := _CACHE_CONFIG_BLOCKS.search(text)) is not None:
            self._source("num_gpu_blocks", process, int(match.group(1)))
            self.final_blocks[(process, self.number)] = int(match.group(1))
            return
        if _FAIL_NO_MEMORY in text:
            self.found = self.fail_no_memory = True
            self._source("failed_to_start", process, _FAIL_NO_MEMORY)
        cpu_alone: int | None = None
        for match in _BLOCKS.finditer(text):
            device, count = match.group(1), int(match.group(2))
            if device.upper() != "CPU":
                self._source("num_gpu_blocks", process, count)
                self.blocks[(process, self.number)] = count
                return
            if not text[: match.start()].rstrip().endswith(","):
                cpu_alone = count  # the CPU build's "# CPU blocks: N" is its KV cache
        if cpu_alone is not None:
            self._source("num_gpu_blocks", process, cpu_alone)
            self.cpu_kv = True
            self.blocks[(process, self.number)] = cpu_alone

    def _kv(self, text: str, process: str) -> None:
        if (match := _KV_TOKENS.search(text)) is not None:
            self._source("kv_cache_tokens", process, _count(match.group(2)))
            self.tokens[(process, self.number)] = _count(match.group(2))
            self.cpu_kv = self.cpu_kv or match.group(1) == "CPU"
        if (match := _CPU_KV_SET.search(text)) is not None:
            self.cpu_kv = True
            self.rank("available_kv", process, _bytes(match.group(1), match.group(3)), 2)
        if (match := _RESERVED_KV.search(text)) is not None:  # CUDA, ROCm and XPU with --kv-cache-memory
            self.kv_specified = True
            self.rank("available_kv", process, _bytes(match.group(1), match.group(2)), 3)

    def _failure(self, text: str, process: str) -> None:
        if (match := _FAIL_NEEDED.search(text)) is not None:
            needed, available = _bytes(match.group(2), match.group(3)), _bytes(match.group(4), match.group(5))
            if needed is not None and available is not None:
                self.fail_needed = (int(match.group(1)), needed, available)
                self._source("failed_to_start", process, match.group(0))
                if not self.per_rank["available_kv"]:  # the error alone: its figure; else the workers' lines
                    self.rank("available_kv", process, available, 1)
        if (match := _FAIL_ESTIMATE.search(text)) is not None:
            self.fail_estimate = int(match.group(1))
        if (match := _FAIL_TOKENS.search(text)) is not None:
            self.fail_tokens = (int(match.group(1)), int(match.group(2)))
            self._source("failed_to_start", process, match.group(0))

    def _memory(self, text: str, process: str) -> None:
        if (match := _AVAILABLE_KV.search(text)) is not None:
            self.rank("available_kv", process, _bytes(match.group(1), match.group(2)), 3)
        if (match := _BUDGET_TOTAL.search(text)) is not None:
            self.rank("total", process, _bytes(match.group(1), match.group(2)))
            self.set_utilization(_finite(match.group(3)), 2, process)
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
        if (match := _FREE_ON_DEVICE.search(text)) is not None:
            self.free_total = _bytes(match.group(3), match.group(4))
            wanted = _FAIL_FREE.search(text, match.end())
            free = _bytes(match.group(1), match.group(4))
            if wanted is not None and free is not None:  # another process holds the memory asked for
                self.fail_free = (free, _finite(wanted.group(1)), _bytes(wanted.group(2), wanted.group(3)))
                self._source("failed_to_start", process, match.group(0) + " " + wanted.group(0))
                self.set_utilization(self.fail_free[1], 2, process)
        if "kv_cache_memory" in text and "as specified" not in text:
            self.kv_specified = self.kv_specified or _KV_MEMORY_ARG.search(text) is not None
        if _FAIL_NO_MEMORY in text and not self.fail_no_memory:
            self.found = self.fail_no_memory = True
            self._source("failed_to_start", process, _FAIL_NO_MEMORY)

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
            self.set_utilization(_finite(values["gpu_memory_utilization"][0]), 2, process)

    # --- summary ---

    def _largest(self, name: str, label: str, notes: list[str]) -> int | None:
        values = [v for _, v, _ in self.per_rank[name].values()]
        if not values:
            return None
        if len({round(v) for v in values}) > 1:
            notes.append(
                f"{label} differs by rank ({min(values) / GiB:.2f}-{gib(max(values))}); the largest is reported"
            )
        return round(max(values))

    def _stage(self, process: str) -> int | None:
        match = _TAG_STAGE.search(self.labels.get(process, "").rsplit(" > ", 1)[-1])
        return int(match.group(1)) if match else None

    def _order(self, process: str) -> tuple[int, int, int]:
        """A worker's place in vLLM's rank order: pipeline stage, then tensor-parallel rank, then first line."""
        name = self.labels.get(process, "").rsplit(" > ", 1)[-1]
        rank = _TAG_RANK.search(name.split(" pid=", 1)[0])
        first = min((line for (_, p, line) in self.sources if p == process), default=0)
        return (self._stage(process) or 0, int(rank.group(1)) if rank else 0, first)

    def _worker_counts(self) -> tuple[dict[str, int], str] | None:
        """Tokens (or blocks) per worker that printed its available KV memory: its own line, or the engine's
        lines in rank order, one per worker; None when the log does not tie them together."""
        workers = sorted(self.per_rank["available_kv"], key=self._order)
        if len(workers) < 2:
            return None
        for counts, unit in ((self.tokens, "tokens"), (self.blocks, "blocks")):
            own = {p: c for (p, _), c in counts.items() if p in self.per_rank["available_kv"]}
            if len(own) == len(workers):
                return own, unit
            if len(counts) == len(workers) and len({p for p, _ in counts}) == 1:
                ordered = [c for _, c in sorted(counts.items(), key=lambda item: item[0][1])]
                return dict(zip(workers, ordered, strict=True)), unit
        return None

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
        if self.profiling_overrides:
            notes.append(
                "an 'Overriding num_gpu_blocks=0' line printed while CUDA graphs were profiled, before the memory "
                "budget, is not the block count"
            )

        block_size = self.block_size
        token_values = list(self.tokens.values())
        block_values = list(self.blocks.values())
        blocks: int | None = min(block_values) if block_values else None
        if self.final_blocks:
            blocks = min(self.final_blocks.values())
        if self.override is not None:
            blocks = self.override[1]
        tokens: int | None = min(token_values) if token_values else None
        if len(set(token_values)) > 1:
            notes.append(
                f"KV cache size differs by rank ({min(token_values):,}-{max(token_values):,} tokens); "
                "the minimum is what vLLM uses"
            )
        if len(set(block_values)) > 1:
            notes.append(
                f"block counts differ by rank ({min(block_values)}-{max(block_values)}); the minimum is what vLLM uses"
            )
        if tokens is None and blocks is not None and blocks > 0 and block_size:
            tokens = blocks * block_size
            notes.append("kv_cache_tokens = num_gpu_blocks x block_size")
        if blocks is None and tokens is not None and block_size and tokens % block_size == 0:
            blocks = tokens // block_size
            notes.append("num_gpu_blocks = kv_cache_tokens / block_size")

        kv_bytes, limiting = self._kv_bytes(notes)
        if kv_bytes is not None and kv_bytes < 0:
            notes.append("the KV cache memory is negative: the model and its activations do not fit")
        if self.cpu_kv:
            notes.append("CPU build: the KV cache is in host memory")
        if self.kv_specified:
            notes.append("the KV cache size was given (--kv-cache-memory): gpu_memory_utilization does not set it")
        utilization = self.utilization[1] if self.utilization is not None else None
        if self.utilization_raise is not None:
            notes.append(
                f"vLLM suggests --gpu-memory-utilization {self.utilization_raise} to keep the same KV cache size "
                f"(the run used {utilization})"
            )
        total = self._largest("total", "total GPU memory", notes)
        failure = self._failure_facts(
            notes,
            kv_bytes=kv_bytes,
            tokens=tokens,
            blocks=blocks,
            utilization=utilization,
            total=total,
            block_size=block_size,
        )
        return VllmLogFacts(
            vllm_version=self.version,
            weights_bytes=weights,
            kv_cache_bytes=kv_bytes,
            kv_cache_tokens=tokens,
            num_gpu_blocks=blocks,
            max_concurrency=min(self.concurrency.values()) if self.concurrency else None,
            max_concurrency_tokens=self.concurrency_tokens,
            gpu_memory_utilization=utilization,
            total_gpu_memory_bytes=total,
            non_torch_bytes=self._largest("non_torch", "non-torch memory", notes),
            activation_peak_bytes=self._largest("activation", "activation peak", notes),
            cuda_graph_bytes=self._largest("graph", "CUDA graph memory", notes),
            block_size=block_size,
            ranks=max(1, len(ranks)),
            notes=tuple(notes),
            limiting_worker=limiting,
            workers=self._workers(ranks),
            sources=tuple(
                {"figure": figure, "worker": self.labels.get(process, process), "line": line, "value": value}
                for (figure, process, line), value in sorted(self.sources.items(), key=lambda item: item[0][2])
            ),
            **failure,
        )

    def _workers(self, ranks: set[str]) -> tuple[dict[str, Any], ...]:
        counts = self._worker_counts()
        out: list[dict[str, Any]] = []
        for process in sorted(ranks, key=self._order):
            worker: dict[str, Any] = {"worker": self.labels.get(process, process), "stage": self._stage(process)}
            lines: dict[str, int] = {}
            for name, key in _WORKER_FIELDS.items():
                seen = self.per_rank[name].get(process)
                worker[key] = None if seen is None else round(seen[1])
                if seen is not None:
                    lines[key] = seen[2]
            if counts is not None and process in counts[0]:
                worker["kv_cache_tokens" if counts[1] == "tokens" else "num_gpu_blocks"] = counts[0][process]
            worker["lines"] = lines
            out.append(worker)
        return tuple(out)

    def _kv_bytes(self, notes: list[str]) -> tuple[int | None, str | None]:
        """Allocated KV bytes per GPU: from blocks or tokens x page bytes where the log allows, else the
        "Available KV cache memory" (the smallest over ranks: it sets the block count); and the worker that
        sets the block count, where the log tells."""
        per_worker = {p: v for p, (_, v, _) in self.per_rank["available_kv"].items()}
        available = sorted(per_worker.values())
        if not available:
            return None, None
        if self.override is not None:
            before, after = self.override
            if before > 0:
                notes.append(
                    f"num_gpu_blocks overridden ({before} -> {after}); kv_cache_bytes = {after} blocks x "
                    "page bytes (available memory / blocks before the override)"
                )
                return round(after * available[0] / before), None
            notes.append("num_gpu_blocks overridden from 0: kv_cache_bytes is the available memory, not the override")
        if len({round(v) for v in available}) <= 1:
            return round(available[0]), None
        spread = f"({available[0] / GiB:.2f}-{gib(available[-1])})"
        smallest = min(per_worker, key=lambda p: per_worker[p])
        stages = {self._stage(p) for p in per_worker}
        counts = self._worker_counts()
        if len(stages) > 1:
            return self._kv_bytes_by_stage(per_worker, counts, spread, notes)
        for values, unit in ((list(self.tokens.values()), "tokens"), (list(self.blocks.values()), "blocks")):
            if len(values) == len(available) and len(set(values)) > 1 and max(values) > 0:
                per_unit = available[-1] / max(values)  # the largest rank: the least rounding
                notes.append(
                    f"Available KV cache memory differs by rank {spread}; kv_cache_bytes from {unit} "
                    f"(the smallest rank's {min(values):,} {unit} x {per_unit:,.0f} B)"
                )
                return round(min(values) * per_unit), self.labels.get(smallest, smallest)
        notes.append(
            f"Available KV cache memory differs by rank {spread}; kv_cache_bytes is the smallest, "
            f"which sets the block count ({self.labels.get(smallest, smallest)})"
        )
        return round(available[0]), self.labels.get(smallest, smallest)

    def _kv_bytes_by_stage(
        self, per_worker: dict[str, float], counts: tuple[dict[str, int], str] | None, spread: str, notes: list[str]
    ) -> tuple[int | None, str | None]:
        """Pipeline parallelism: each stage holds its own layers, so its bytes per token differ; the stage with
        the fewest blocks (not always the least memory) sets the count."""
        poorest = min(per_worker, key=lambda p: per_worker[p])
        if counts is None or min(counts[0].values()) <= 0:
            notes.append(
                f"pipeline stages have their own available KV memory {spread}; the stage with the fewest blocks "
                "sets the block count, and this log does not tie block or token counts to stages, so which one it "
                "is is unknown (the least memory need not be it); kv_cache_bytes is the smallest available memory"
            )
            return round(per_worker[poorest]), None
        by_worker, unit = counts
        least = min(by_worker.values())
        setter = min(by_worker, key=lambda p: (by_worker[p], self._order(p)))
        per_unit = {p: per_worker[p] / by_worker[p] for p in by_worker}
        allocated = {p: least * per_unit[p] for p in by_worker}
        label = f"stage PP{self._stage(setter)} ({self.labels.get(setter, setter)})"
        why = f"it fits the fewest {unit} ({least:,})"
        if self._stage(poorest) == self._stage(setter):
            why += f" and has the least available memory ({gib(per_worker[setter])})"
        else:
            why += (
                f", though stage PP{self._stage(poorest)} has less memory ({gib(per_worker[poorest])} vs "
                f"{gib(per_worker[setter])}): its layers take fewer bytes per token "
                f"({per_unit[poorest]:,.0f} B vs {per_unit[setter]:,.0f} B a {unit[:-1]})"
            )
        notes.append(f"{label} sets the block count: {why}")
        notes.append(
            f"kv_cache_bytes is the largest per-GPU allocation over stages ({least:,} {unit} x each stage's "
            "bytes per " + unit[:-1] + ")"
        )
        return round(max(allocated.values())), label

    def _failure_facts(
        self,
        notes: list[str],
        *,
        kv_bytes: int | None,
        tokens: int | None,
        blocks: int | None,
        utilization: float | None,
        total: int | None,
        block_size: int | None,
    ) -> dict[str, Any]:
        """Why vLLM did not start, and what would have made it fit, from the figures the log holds."""
        max_len = self.max_len
        needed: float | None = None
        available: float | None = None
        fits: int | None = None  # tokens that fit in what was available
        reason: str | None = None
        if self.fail_needed is not None:
            max_len, needed, available = self.fail_needed
            reason = (
                f"the KV cache does not fit: one request of {max_len:,} tokens needs {gib(needed)} of KV cache, "
                f"{gib(available)} is available"
            )
            fits = self.fail_estimate
        elif self.fail_tokens is not None:
            max_len, fits = self.fail_tokens
            reason = f"the KV cache does not fit: one request of {max_len:,} tokens, the KV cache holds {fits:,}"
        elif self.fail_no_memory or (blocks is not None and blocks <= 0):
            reason = "no memory is left for the KV cache blocks"
            if blocks is not None and blocks <= 0:
                reason += f" (num_gpu_blocks {blocks})"
        if reason is None and self.fail_free is not None:
            free, asked, wanted = self.fail_free
            total_bytes = total if total is not None else self.free_total
            reason = f"the GPU has {gib(free)} free at start-up, less than"
            reason += f" the {gib(wanted)} asked" if wanted is not None else " asked"
            reason += f" by gpu_memory_utilization {asked}" if asked is not None else ""
            fraction = math.floor(free / total_bytes * 100) / 100 if total_bytes else None
            if fraction is not None:
                notes.append(f"another process holds the rest: --gpu-memory-utilization {fraction} fits what is free")
            return {"failed_to_start": reason, "max_model_len": max_len, "suggested_gpu_memory_utilization": fraction}
        if reason is None:
            return {"max_model_len": max_len}
        if available is None and self.per_rank["available_kv"]:
            available = min(v for _, v, _ in self.per_rank["available_kv"].values())
        per_token: float | None = None
        if needed is not None and max_len:
            per_token = needed / max_len
        elif available is not None and available > 0 and fits:
            per_token = available / fits
        elif kv_bytes and tokens and kv_bytes > 0 and tokens > 0:
            per_token = kv_bytes / tokens
        if needed is None and per_token is not None and max_len:
            needed = per_token * max_len
        if fits is None and per_token is not None and available is not None:
            fits = max(0, math.floor(available / per_token))
            if block_size:
                fits -= fits % block_size
        total_bytes = total if total is not None else self.free_total
        suggested_utilization: float | None = None
        shortfall = None if available is None else (needed if needed is not None else 0.0) - available
        if shortfall is not None and total_bytes and utilization is not None:
            wanted = utilization + shortfall / total_bytes
            if wanted <= 1:
                suggested_utilization = math.ceil(wanted * 100) / 100
                if needed is None:
                    notes.append(
                        "the KV bytes per token are not in the log: suggested_gpu_memory_utilization is only the "
                        "least that leaves any KV memory"
                    )
            else:
                notes.append(
                    f"no --gpu-memory-utilization fits: {gib(shortfall)} more is needed than the GPU's "
                    f"{gib(total_bytes)} allows at {utilization}"
                )
        elif shortfall is not None and shortfall > 0:
            missing = "the GPU's total memory" if not total_bytes else "the utilization"
            notes.append(
                f"--gpu-memory-utilization must give {gib(shortfall)} more to the KV cache; {missing} is not in the "
                "log, so the fraction cannot be computed"
            )
        suggested_len = fits if fits else None
        if fits == 0:
            notes.append("no --max-model-len fits: no memory is left for a single KV block")
        return {
            "failed_to_start": reason,
            "max_model_len": max_len,
            "kv_cache_needed_bytes": None if needed is None else round(needed),
            "suggested_gpu_memory_utilization": suggested_utilization,
            "suggested_max_model_len": suggested_len,
            "suggested_kv_cache_memory_bytes": None if needed is None else math.ceil(needed),
        }


_WRAP_LINES = 16  # physical lines one wrapped record may take
_SHORTEST_WRAP = 30  # a keyword-free line shorter than this is taken as whole, not as the start of a wrapped one


def _scan(lines: Iterable[tuple[int, str]], source: str) -> VllmLogFacts:
    """Each log record read whole: a record starts with vLLM's prefix (or a process tag); the lines after it that
    start none are its wrapped rest. A line that follows no record is read alone (a log with its prefixes
    stripped)."""
    scan = _Scan()
    record: list[str] = []  # the open record: its first line, then the wrapped rest
    record_at = ("", 0)  # the process that printed it and its line number
    for number, raw in _join_cri(lines):
        line = _ANSI.sub("", raw) if "\x1b" in raw else raw
        if not record and not any(word in line for word in _KEYWORDS) and not _may_start_wrapped(line):
            continue
        if record and _RECORD_START.match(line) is not None and not any(word in line for word in _KEYWORDS):
            _read_record(scan, record, *record_at)  # the next record, plainly; it holds no figure
            record = []
            if not _may_start_wrapped(line):
                continue
        text, process, label = _unwrap(line)
        starts = _RECORD_START.match(text) is not None
        if record:
            if not starts and len(record) < _WRAP_LINES and sum(map(len, record)) + len(text) <= LINE_CAP:
                record.append(text)
                continue
            _read_record(scan, record, *record_at)
            record = []
        if not any(word in line for word in _KEYWORDS) or (
            text is not line and not any(word in text for word in _KEYWORDS)
        ):
            if starts and len(text) >= _SHORTEST_WRAP:  # a record whose figure may be in its wrapped rest
                record, record_at = [text], (process, number)
                scan.labels.setdefault(process, label)
            continue
        scan.labels.setdefault(process, label)
        if starts:
            record, record_at = [text], (process, number)
        else:
            _read_record(scan, [text], process, number)
    if record:
        _read_record(scan, record, *record_at)
    if not scan.found:
        raise VllmLogError(f"{source}: no vLLM memory line (weights, KV cache, blocks or memory profile)")
    return scan.facts()


def _may_start_wrapped(line: str) -> bool:
    """Whether a line without a keyword may be a record whose figure is in its wrapped rest (cheap checks first:
    most such lines are request logs)."""
    if len(line) < _SHORTEST_WRAP:
        return False
    if line[:1].isdigit() or "|" in line[:140] or "msg=" in line or line.lstrip().startswith("{"):
        return True  # wrapped in a container or structured prefix: unwrap to tell
    return _VLLM_START.match(line) is not None


def _read_record(scan: _Scan, parts: list[str], process: str, number: int) -> None:
    """One record, as the line that starts it; wrapped over several lines it is read joined at word breaks,
    then joined as cut (a terminal's fixed-width wrap), whose figures, all keyed to the first line, win."""
    scan.number = number
    if len(parts) == 1:
        scan.line(parts[0], process)
        return
    for joined in (" ".join(part.strip() for part in parts), "".join(parts)):
        if any(word in joined for word in _KEYWORDS):
            scan.line(joined, process)


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
    if facts.limiting_worker is not None:
        rows.append(("sets the block count", facts.limiting_worker))
    if facts.failed_to_start is not None:
        rows += [
            ("FAILED TO START", facts.failed_to_start),
            ("max_model_len", show(facts.max_model_len)),
            ("KV cache needed", _size(facts.kv_cache_needed_bytes)),
            ("fits with --gpu-memory-utilization", show(facts.suggested_gpu_memory_utilization)),
            ("fits with --max-model-len", show(facts.suggested_max_model_len)),
            ("fits with --kv-cache-memory", _size(facts.suggested_kv_cache_memory_bytes)),
        ]
    out = [f"vLLM memory facts from {source}"]
    out += [f"  {line}" for line in table(("fact", "value"), rows).splitlines()]
    if len(facts.workers) > 1:
        out.append("  per worker (the minimum of the KV figures is what vLLM uses):")
        header = ("worker", "stage", "weights", "available KV", "KV tokens/blocks")
        worker_rows = [
            (
                str(worker["worker"]),
                "-" if worker.get("stage") is None else f"PP{worker['stage']}",
                _size(worker.get("weights_bytes")),
                _size(worker.get("available_kv_cache_bytes")),
                show(worker.get("kv_cache_tokens", worker.get("num_gpu_blocks"))),
            )
            for worker in facts.workers
        ]
        out += [f"  {line}" for line in table(header, worker_rows).splitlines()]
    out += [f"  note: {note}" for note in facts.notes]
    return "\n".join(out)


def _size(value: object) -> str:
    return "-" if not isinstance(value, int) else f"{gib(value)} ({value:,} B)"


def _show_source(figure: str, value: object) -> str:
    if isinstance(value, float) and figure in _WORKER_FIELDS:
        return gib(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_explain(facts: VllmLogFacts, source: str) -> str:
    """Each figure read, per worker, with the number of the line it came from."""
    out = [f"where each figure of {source} comes from (line numbers of the file)"]
    by_worker: dict[str, list[tuple[str, str, str]]] = {}
    for item in facts.sources:
        figure, value = str(item["figure"]), item["value"]
        by_worker.setdefault(str(item["worker"]), []).append((str(item["line"]), figure, _show_source(figure, value)))
    for worker, rows in by_worker.items():
        out.append(f"  {worker}:")
        out += [f"    {line}" for line in table(("line", "figure", "value"), rows, right=(0,)).splitlines()]
    return "\n".join(out)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors, from a flag or a GPUATTR_* variable, as one line (``main`` prints it and exits 2)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="gpuattr vllm-log",
        description="What a vLLM server's start-up log says about its GPU memory (sizes in GiB = 2^30 B). Every "
        "flag is also an environment variable GPUATTR_<FLAG>.",
    )
    parser.add_argument("file", metavar="FILE", help="the vLLM server log; - reads standard input")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (absent figures are null)")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also show each figure with the line (number) it came from, per worker (in JSON: sources)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``gpuattr vllm-log FILE [--json]``: the memory facts of a vLLM log; exit 2 naming the file on error."""
    parser = build_parser()
    try:
        args = envflags.parse_args(parser, argv)
        facts = parse_file(args.file)
    except (_UsageError, VllmLogError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"source": args.file, **facts.to_json(sources=args.explain)}, indent=2))
    else:
        print(render_table(facts, args.file))
        if args.explain:
            print(render_explain(facts, args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
