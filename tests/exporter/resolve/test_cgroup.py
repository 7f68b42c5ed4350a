"""cgroup text → container and pod, against real and documented-format fixture files."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.resolve.cgroup import CgroupParseError, ContainerRef, parse_cgroup

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"

ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ID2 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
UID = "5f1c7e2a-9b3d-4c8e-a1f0-2d6b8e4c9a71"
STATIC_UID = "6f2d1c0a9b8e7d6c5b4a39281706f5e4"


def ref(pod: str | None, cid: str | None, runtime: str | None, qos: str | None) -> ContainerRef:
    return ContainerRef(pod_uid=pod, container_id=cid, runtime=runtime, qos=qos)


CASES: list[tuple[str, ContainerRef | None]] = [
    # Nine real lines seen on nodes; docs/reference/nvml-kubernetes.md has the naming rules they follow.
    (
        "ref1_crio_v2_systemd_burstable.txt",
        ref(
            "2c9f8a79-5391-454b-88cb-86190881cb96",
            "a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d",
            "cri-o",
            "burstable",
        ),
    ),
    (
        "ref2_crio_v1_name_systemd_burstable.txt",
        ref(
            "d0511cd2-29d2-4215-be0f-f77bc0609d99",
            "f93ee491b8ed2680d5a909eb098b14a9430173b57ca1c4efedd8768566d67e8e",
            "cri-o",
            "burstable",
        ),
    ),
    (
        "ref3_crio_v2_systemd_guaranteed.txt",
        ref(
            "7922aa99-d4aa-4885-a953-82976860b23a",
            "1c33afbc9e5aa6c69150d1af05254b562a4b17c313fc6153e3625cf456922bfe",
            "cri-o",
            "guaranteed",
        ),
    ),
    (
        "ref4_containerd_kubelet_slice_burstable.txt",
        ref(
            "3cae2e45-052c-4b11-80d3-4d7b2d2d3464",
            "2b180104511194aab36fd295d3e217439f3ddb5bc88277f37b4952abee85c40e",
            "containerd",
            "burstable",
        ),
    ),
    (
        "ref5_containerd_service_v1_besteffort.txt",
        ref(
            "0043435f-1854-4327-b76b-730f681a781d",
            "01fd96f7ad292b02a8317cde4ecb8c7ef3cc06ffdd113f13410e0837eb2b2a20",
            "containerd",
            "besteffort",
        ),
    ),
    (
        "ref6_cgroupfs_v1_burstable.txt",
        ref(
            "f6adb0af-0855-4bab-b25b-c853f18d0ce2",
            "35b97177dada20362ab90d90ac63cd54e8a41cf87bea34f270631b6da17f4a93",
            None,
            "burstable",
        ),
    ),
    (
        "ref7_cgroupfs_v2_guaranteed.txt",
        ref(
            "51b64565-2b17-4d46-83ac-22e398f2f7fb",
            "65d752a38e1db784d521f48c3f1956f4f9a74ebb923377144f253f3aca9fa028",
            None,
            "guaranteed",
        ),
    ),
    (
        "ref8_relative_docker_besteffort.txt",
        ref(
            "fd698699-eabf-4c23-92ef-cf0bbdb78261",
            "2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f",
            "docker",
            "besteffort",
        ),
    ),
    (
        "ref9_plain_docker_systemd_v1.txt",
        ref(None, "2fa3e04b676df750842faf017052dd37ea0cc5bc7259a3487a1718c7fe100c94", "docker", None),
    ),
    # Constructed from the documented formats.
    ("cgroupfs_v1_besteffort_full_file.txt", ref(UID, ID, None, "besteffort")),
    ("v1_mixed_depths_deepest_wins.txt", ref(UID, ID, "containerd", "burstable")),
    ("systemd_v2_besteffort_containerd.txt", ref(UID, ID, "containerd", "besteffort")),
    ("systemd_v2_pod_level_no_container.txt", ref(UID, None, None, "burstable")),
    ("crio_conmon_in_pod_slice.txt", ref(UID, None, None, "burstable")),
    ("crio_conmon_in_system_slice.txt", None),
    ("relative_containerd_nested.txt", ref(UID, ID, "containerd", "burstable")),
    ("relative_cgroupfs_qos_hidden.txt", ref(UID, ID, None, None)),
    ("relative_sibling_container_same_pod.txt", ref(None, ID2, "containerd", None)),
    ("no_trailing_newline_docker_guaranteed.txt", ref(UID, ID, "docker", "guaranteed")),
    ("empty.txt", None),
    ("host_user_session.txt", None),
    ("host_sshd_service.txt", None),
    ("host_init_scope.txt", None),
    ("host_root.txt", None),
    ("plain_docker_cgroupfs_v1.txt", ref(None, ID, "docker", None)),
    ("kind_node_nested_cgroupfs.txt", ref(UID, ID, None, "besteffort")),
    ("kind_node_pod_level_only.txt", ref(UID, None, None, "besteffort")),
    ("static_pod_hash_uid.txt", ref(STATIC_UID, ID, None, "burstable")),
    ("static_pod_hash_uid_systemd.txt", ref(STATIC_UID, ID, "cri-o", "besteffort")),
    ("container_with_nested_child_cgroup.txt", ref(UID, ID, "containerd", "guaranteed")),
    ("crio_v2_guaranteed_systemd_and_hybrid.txt", ref(UID, ID, "cri-o", "guaranteed")),
]

MALFORMED = [
    "malformed_no_colons.txt",
    "malformed_one_colon.txt",
    "malformed_hierarchy_not_number.txt",
    "malformed_relative_path_without_slash.txt",
    "malformed_binary_garbage.bin",
]


def read_fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8", errors="replace")


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[c[0] for c in CASES])
def test_fixture_resolves_to_expected_container(name: str, expected: ContainerRef | None) -> None:
    assert parse_cgroup(read_fixture(name), str(FIXTURES / name)) == expected


def test_every_fixture_file_is_in_a_table() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir()}
    assert on_disk == {c[0] for c in CASES} | set(MALFORMED)


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_file_raises_error_naming_the_source(name: str) -> None:
    source = str(FIXTURES / name)
    with pytest.raises(CgroupParseError, match=name.replace(".", r"\.")):
        parse_cgroup(read_fixture(name), source)


def test_error_message_names_the_line_number_and_shows_the_bad_line() -> None:
    text = f"0::/kubepods/pod{UID}/{ID}\nnot a cgroup line\n"
    with pytest.raises(CgroupParseError) as info:
        parse_cgroup(text, "<pid 123 cgroup>")
    message = str(info.value)
    assert "<pid 123 cgroup>" in message
    assert "line 2" in message
    assert "not a cgroup line" in message


def test_cgroup_parse_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="src"):
        parse_cgroup("garbage", "src")


def test_nul_byte_inside_a_path_is_rejected() -> None:
    with pytest.raises(CgroupParseError):
        parse_cgroup("0::/kubepods\x00/evil\n", "src")


def test_very_long_bad_line_is_shortened_in_the_message() -> None:
    with pytest.raises(CgroupParseError) as info:
        parse_cgroup("x" * 10_000, "src")
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "prefix",
    ["kubepods", "kubelet.slice/kubelet-kubepods", "../../kubepods", "system.slice/containerd.service/kubepods"],
)
@pytest.mark.parametrize(
    ("qos_segment", "qos"),
    [("", "guaranteed"), ("burstable", "burstable"), ("besteffort", "besteffort")],
)
def test_every_qos_class_is_read_from_systemd_slices_wherever_they_sit(prefix: str, qos_segment: str, qos: str) -> None:
    head = prefix.rsplit("/", 1)
    base = head[-1]  # "kubepods" or "kubelet-kubepods"
    parent = f"{head[0]}/" if len(head) == 2 else ""
    uid_ = UID.replace("-", "_")
    if qos_segment:
        path = f"{parent}{base}.slice/{base}-{qos_segment}.slice/{base}-{qos_segment}-pod{uid_}.slice"
    else:
        path = f"{parent}{base}.slice/{base}-pod{uid_}.slice"
    got = parse_cgroup(f"0::/{path}/cri-containerd-{ID}.scope\n", "src")
    assert got == ref(UID, ID, "containerd", qos)


@pytest.mark.parametrize(("qos_segment", "qos"), [("", "guaranteed"), ("burstable/", "burstable")])
def test_every_qos_class_is_read_from_cgroupfs_paths(qos_segment: str, qos: str) -> None:
    got = parse_cgroup(f"3:memory:/kubepods/{qos_segment}pod{UID}/{ID}\n", "src")
    assert got == ref(UID, ID, None, qos)


def test_pod_uid_with_underscores_and_with_dashes_give_the_same_uid() -> None:
    uid_ = UID.replace("-", "_")
    a = parse_cgroup(f"0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope", "a")
    b = parse_cgroup(f"0::/kubepods/pod{UID}/{ID}", "b")
    assert a is not None
    assert b is not None
    assert a.pod_uid == b.pod_uid == UID


def test_containerd_colon_form_works_for_crio_and_docker_runtimes_too() -> None:
    for runtime_prefix, runtime in (("crio", "cri-o"), ("docker", "docker"), ("cri-containerd", "containerd")):
        line = f"1:cpu:/system.slice/kubepods-burstable-pod{UID}.slice:{runtime_prefix}:{ID}"
        assert parse_cgroup(line, "src") == ref(UID, ID, runtime, "burstable")


def test_short_or_uppercase_ids_are_not_taken_for_containers() -> None:
    assert parse_cgroup("0::/system.slice/docker-abc123.scope", "src") is None
    assert parse_cgroup(f"0::/docker/{ID.upper()}", "src") is None


def test_blank_lines_between_entries_are_ignored() -> None:
    assert parse_cgroup(f"\n\n0::/kubepods/pod{UID}/{ID}\n\n", "src") == ref(UID, ID, None, "guaranteed")


def test_line_order_does_not_change_which_v1_line_wins() -> None:
    lines = read_fixture("v1_mixed_depths_deepest_wins.txt").splitlines()
    forward = parse_cgroup("\n".join(lines), "src")
    backward = parse_cgroup("\n".join(reversed(lines)), "src")
    assert forward == backward == ref(UID, ID, "containerd", "burstable")
