"""Process identity from fake proc trees built in tmp_path."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from exporter.resolve.cgroup import ContainerRef
from exporter.resolve.procfs import IdentityCache, ProcessIdentity, ProcParseError, ProcReader

ID_A = "a" * 64
ID_B = "b" * 64
UID_A = "11111111-2222-3333-4444-555555555555"
UID_B = "66666666-7777-8888-9999-000000000000"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def cgroup_of(uid: str, cid: str) -> str:
    slice_uid = uid.replace("-", "_")
    return (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
        f"cri-containerd-{cid}.scope\n"
    )


POD_A = cgroup_of(UID_A, ID_A)
POD_B = cgroup_of(UID_B, ID_B)
REF_A = ContainerRef(pod_uid=UID_A, container_id=ID_A, runtime="containerd", qos="burstable")
REF_B = ContainerRef(pod_uid=UID_B, container_id=ID_B, runtime="containerd", qos="burstable")


def stat_line(pid: int, comm: str, *, ppid: int = 1, start: int = 1000) -> bytes:
    # Fields 3.. (state, ppid, 17 more, starttime = field 22, then 30 more), as the kernel writes them.
    after = ["S", str(ppid), *["0"] * 17, str(start), *["0"] * 30]
    return f"{pid} ({comm}) {' '.join(after)}\n".encode()


def make_process(
    root: Path,
    pid: int,
    *,
    argv: Sequence[str] = ("python3", "app.py"),
    comm: str = "python3",
    cgroup: str = POD_A,
    start: int = 1000,
    ppid: int = 1,
    environ: dict[str, str] | None = None,
) -> Path:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_bytes(stat_line(pid, comm, ppid=ppid, start=start))
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (d / "cgroup").write_text(cgroup)
    if environ is not None:
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items()))
    return d


# --- ProcReader.identity -----------------------------------------------------------------------------------


def test_identity_has_container_comm_start_time_model_and_class(tmp_path: Path) -> None:
    make_process(tmp_path, 4242, argv=["vllm", "serve", "org/model", "--port", "8000"], comm="vllm", start=777)
    assert ProcReader(tmp_path).identity(4242) == ProcessIdentity(
        pid=4242,
        start_time_ticks=777,
        comm="vllm",
        container=REF_A,
        model="org/model",
        server="vllm",
        workload_class="inference",
    )


def test_host_process_has_no_container(tmp_path: Path) -> None:
    make_process(tmp_path, 10, cgroup="0::/system.slice/sshd.service\n")
    identity = ProcReader(tmp_path).identity(10)
    assert identity is not None
    assert identity.container is None


def test_missing_process_gives_none(tmp_path: Path) -> None:
    assert ProcReader(tmp_path).identity(999) is None
    assert ProcReader(tmp_path).identity(0) is None
    assert ProcReader(tmp_path).identity(-5) is None


@pytest.mark.parametrize("comm", ["a b", "x) S 1 2 (y", "(((", ")))", "my (weird) proc)", ""])
def test_stat_with_spaces_and_parentheses_in_comm_is_split_at_the_last_paren(tmp_path: Path, comm: str) -> None:
    make_process(tmp_path, 77, comm=comm, start=123456)
    identity = ProcReader(tmp_path).identity(77)
    assert identity is not None
    assert identity.start_time_ticks == 123456
    assert identity.comm == comm


def test_cmdline_is_split_at_nul_and_bad_utf8_is_replaced(tmp_path: Path) -> None:
    d = make_process(tmp_path, 5)
    (d / "cmdline").write_bytes(b"vllm\0serve\0/models/mod\xffel-7b/\0--port\x008000\0")
    identity = ProcReader(tmp_path).identity(5)
    assert identity is not None
    assert identity.model == "mod\ufffdel-7b"
    assert identity.server == "vllm"


def test_setproctitle_padding_in_cmdline_is_ignored(tmp_path: Path) -> None:
    d = make_process(tmp_path, 6)
    (d / "cmdline").write_bytes(b"VLLM::EngineCore" + b"\0" * 100)
    identity = ProcReader(tmp_path).identity(6)
    assert identity is not None
    assert (identity.server, identity.workload_class) == ("vllm", "inference")


def test_model_id_comes_from_environ_and_other_variables_are_not_kept(tmp_path: Path) -> None:
    make_process(
        tmp_path,
        8,
        argv=["text-generation-launcher", "--port", "80"],
        environ={"HF_TOKEN": HF_TOKEN, "MODEL_ID": "org/tgi-model"},
    )
    identity = ProcReader(tmp_path).identity(8)
    assert identity is not None
    assert (identity.model, identity.server) == ("org/tgi-model", "tgi")
    assert all(HF_TOKEN not in str(v) for v in dataclasses.astuple(identity))


def test_environ_is_not_read_when_switched_off(tmp_path: Path) -> None:
    make_process(tmp_path, 8, argv=["text-generation-launcher"], environ={"MODEL_ID": "org/tgi-model"})
    identity = ProcReader(tmp_path, read_environ=False).identity(8)
    assert identity is not None
    assert identity.model is None


class _Hooked(ProcReader):
    """A reader that records the files it reads, raises ``fail[name]`` instead of reading ``name``, and runs
    ``after[name](pid)`` once it has read ``name``."""

    def __init__(
        self,
        root: Path,
        *,
        fail: dict[str, type[OSError]] | None = None,
        after: dict[str, Callable[[int], None]] | None = None,
    ) -> None:
        super().__init__(root)
        self.fail = fail or {}
        self.after = after or {}
        self.reads: list[str] = []

    def _read(self, pid: int, name: str) -> bytes:
        self.reads.append(f"{pid}/{name}")
        if name in self.fail:
            raise self.fail[name](name)
        data = super()._read(pid, name)
        if name in self.after:
            self.after[name](pid)
        return data


def test_unreadable_environ_and_cmdline_leave_the_identity_without_a_model(tmp_path: Path) -> None:
    make_process(tmp_path, 9, argv=["vllm", "serve", "org/model"], environ={})
    reader = _Hooked(tmp_path, fail={"environ": PermissionError, "cmdline": PermissionError})
    identity = reader.identity(9)
    assert identity is not None
    assert identity.container == REF_A
    assert identity.model is None


def test_process_vanishing_between_stat_and_cgroup_gives_none(tmp_path: Path) -> None:
    make_process(tmp_path, 31, argv=["vllm", "serve", "org/model"])
    reader = _Hooked(tmp_path, after={"stat": lambda pid: shutil.rmtree(tmp_path / str(pid))})
    assert reader.identity(31) is None
    assert reader.reads == ["31/stat", "31/cgroup"]


@pytest.mark.parametrize("gone", [FileNotFoundError, ProcessLookupError])
@pytest.mark.parametrize("name", ["cgroup", "comm", "cmdline"])
def test_process_exiting_mid_read_gives_none(tmp_path: Path, gone: type[OSError], name: str) -> None:
    make_process(tmp_path, 32, environ={})
    assert _Hooked(tmp_path, fail={name: gone}).identity(32) is None


@pytest.mark.parametrize("name", ["cgroup", "comm", "cmdline", "environ"])
def test_process_directory_removed_after_any_read_gives_none(tmp_path: Path, name: str) -> None:
    make_process(tmp_path, 34, environ={})
    reader = _Hooked(tmp_path, after={name: lambda pid: shutil.rmtree(tmp_path / str(pid))})
    assert reader.identity(34) is None


def test_missing_environ_alone_does_not_make_the_process_unknown(tmp_path: Path) -> None:
    make_process(tmp_path, 35, argv=["vllm", "serve", "org/model"])  # no environ file written
    identity = ProcReader(tmp_path).identity(35)
    assert identity is not None
    assert identity.model == "org/model"


def test_pid_reused_while_reading_gives_none(tmp_path: Path) -> None:
    make_process(tmp_path, 33, cgroup=POD_A, start=100)

    def reuse(pid: int) -> None:
        make_process(tmp_path, pid, cgroup=POD_B, start=200)

    # The process exits after its cgroup was read; a new one takes the PID before the final stat.
    assert _Hooked(tmp_path, after={"cgroup": reuse}).identity(33) is None


def test_malformed_stat_raises_error_naming_the_file(tmp_path: Path) -> None:
    d = make_process(tmp_path, 40)
    (d / "stat").write_bytes(b"40 (python3 S 1 2 3\n")
    with pytest.raises(ProcParseError, match=str(d / "stat")):
        ProcReader(tmp_path).identity(40)


@pytest.mark.parametrize(
    "content",
    [
        b"40 (x) S 1 2 3\n",  # too few fields
        b"40 (x) " + b" ".join([b"S", b"1", *[b"0"] * 17, b"notanumber", *[b"0"] * 30]) + b"\n",
        b"41 (x) " + b" ".join([b"S", b"1", *[b"0"] * 17, b"5", *[b"0"] * 30]) + b"\n",  # another pid
        b"",
        b"\x00\xff\xfe",
    ],
)
def test_malformed_stat_variants_raise_proc_parse_error(tmp_path: Path, content: bytes) -> None:
    d = make_process(tmp_path, 40)
    (d / "stat").write_bytes(content)
    with pytest.raises(ProcParseError, match="stat"):
        ProcReader(tmp_path).identity(40)


def test_malformed_cgroup_raises_error_naming_the_file(tmp_path: Path) -> None:
    d = make_process(tmp_path, 41, cgroup="\x00\x01binary garbage\n")
    with pytest.raises(ProcParseError, match=str(d / "cgroup")):
        ProcReader(tmp_path).identity(41)


# --- ancestors ---------------------------------------------------------------------------------------------


def test_vllm_engine_core_gets_its_model_from_the_api_server_parent(tmp_path: Path) -> None:
    make_process(tmp_path, 100, argv=["python3", "/usr/local/bin/vllm", "serve", "org/model"], ppid=50)
    make_process(tmp_path, 101, argv=["VLLM::EngineCore"], ppid=100)
    make_process(tmp_path, 102, argv=["VLLM::Worker_TP0"], ppid=101)
    reader = ProcReader(tmp_path)
    for pid in (101, 102):
        identity = reader.identity(pid)
        assert identity is not None
        assert (identity.model, identity.server, identity.workload_class) == ("org/model", "vllm", "inference")


def test_torchrun_worker_is_training_through_its_parent(tmp_path: Path) -> None:
    make_process(tmp_path, 200, argv=["torchrun", "--nproc-per-node", "2", "train.py"])
    make_process(tmp_path, 201, argv=["/usr/bin/python3", "-u", "train.py", "--lr", "1e-4"], ppid=200)
    identity = ProcReader(tmp_path).identity(201)
    assert identity is not None
    assert identity.workload_class == "training"


def test_parent_in_another_container_is_not_asked(tmp_path: Path) -> None:
    make_process(tmp_path, 300, argv=["vllm", "serve", "org/other"], cgroup=POD_B)
    make_process(tmp_path, 301, argv=["VLLM::EngineCore"], cgroup=POD_A, ppid=300)
    identity = ProcReader(tmp_path).identity(301)
    assert identity is not None
    assert (identity.model, identity.server) == (None, "vllm")


def test_ancestor_search_can_be_switched_off(tmp_path: Path) -> None:
    make_process(tmp_path, 100, argv=["vllm", "serve", "org/model"])
    make_process(tmp_path, 101, argv=["VLLM::EngineCore"], ppid=100)
    identity = ProcReader(tmp_path, max_ancestors=0).identity(101)
    assert identity is not None
    assert identity.model is None


def test_vanished_or_malformed_parent_only_ends_the_search(tmp_path: Path) -> None:
    make_process(tmp_path, 401, argv=["VLLM::EngineCore"], ppid=400)  # parent 400 does not exist
    make_process(tmp_path, 500, argv=["vllm", "serve", "org/model"])
    (tmp_path / "500" / "stat").write_bytes(b"garbage")
    make_process(tmp_path, 501, argv=["VLLM::EngineCore"], ppid=500)
    reader = ProcReader(tmp_path)
    for pid in (401, 501):
        identity = reader.identity(pid)
        assert identity is not None
        assert (identity.model, identity.server) == (None, "vllm")


# --- can_see_host_pids -------------------------------------------------------------------------------------


def test_can_see_host_pids_is_false_when_none_of_nvidias_pids_exist(tmp_path: Path) -> None:
    make_process(tmp_path, 1)
    make_process(tmp_path, 7)
    reader = ProcReader(tmp_path)
    assert reader.can_see_host_pids([123456, 234567]) is False
    assert reader.can_see_host_pids([123456, 7]) is True
    assert reader.can_see_host_pids(iter([7])) is True


def test_can_see_host_pids_has_nothing_to_object_to_without_pids(tmp_path: Path) -> None:
    assert ProcReader(tmp_path).can_see_host_pids([]) is True


# --- IdentityCache -----------------------------------------------------------------------------------------


def test_reused_pid_comes_out_with_the_new_pod(tmp_path: Path) -> None:
    make_process(tmp_path, 4242, argv=["vllm", "serve", "org/a"], cgroup=POD_A, start=100)
    cache = IdentityCache(ProcReader(tmp_path))
    first = cache.get(4242)
    assert first is not None
    assert (first.container, first.model) == (REF_A, "org/a")

    shutil.rmtree(tmp_path / "4242")  # the first process exits ...
    assert cache.get(4242) is None
    make_process(tmp_path, 4242, argv=["vllm", "serve", "org/b"], cgroup=POD_B, start=900)  # ... PID reused
    second = cache.get(4242)
    assert second is not None
    assert (second.container, second.model, second.start_time_ticks) == (REF_B, "org/b", 900)


def test_reused_pid_is_re_resolved_even_when_never_seen_gone(tmp_path: Path) -> None:
    make_process(tmp_path, 4242, cgroup=POD_A, start=100)
    cache = IdentityCache(ProcReader(tmp_path))
    assert cache.get(4242) is not None
    make_process(tmp_path, 4242, cgroup=POD_B, start=101)  # replaced between two collections
    identity = cache.get(4242)
    assert identity is not None
    assert identity.container == REF_B


def test_cache_hit_reads_only_stat(tmp_path: Path) -> None:
    make_process(tmp_path, 12, argv=["vllm", "serve", "org/a"], environ={})
    reader = _Hooked(tmp_path)
    cache = IdentityCache(reader)
    first = cache.get(12)
    reader.reads.clear()
    assert cache.get(12) is first
    assert reader.reads == ["12/stat"]


def test_prune_drops_entries_of_pids_no_longer_running(tmp_path: Path) -> None:
    for pid in (1, 2, 3):
        make_process(tmp_path, pid)
    reader = _Hooked(tmp_path)
    cache = IdentityCache(reader)
    for pid in (1, 2, 3):
        cache.get(pid)
    cache.prune([2])
    assert len(cache) == 1
    reader.reads.clear()
    cache.get(1)  # resolved again in full
    assert "1/cgroup" in reader.reads


def test_cache_holds_at_most_max_entries_dropping_the_least_recently_used(tmp_path: Path) -> None:
    for pid in (1, 2, 3):
        make_process(tmp_path, pid)
    reader = _Hooked(tmp_path)
    cache = IdentityCache(reader, max_entries=2)
    cache.get(1)
    cache.get(2)
    cache.get(1)  # 2 is now the least recently used
    cache.get(3)
    assert len(cache) == 2
    reader.reads.clear()
    cache.get(1)
    assert reader.reads == ["1/stat"]  # still cached
    reader.reads.clear()
    cache.get(2)
    assert "2/cgroup" in reader.reads  # evicted, resolved again


def test_cache_rejects_a_size_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        IdentityCache(ProcReader(tmp_path), max_entries=0)


def test_cache_propagates_malformed_files(tmp_path: Path) -> None:
    make_process(tmp_path, 13, cgroup="garbage\n")
    with pytest.raises(ProcParseError):
        IdentityCache(ProcReader(tmp_path)).get(13)
