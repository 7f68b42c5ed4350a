"""The generated pod-resources stubs match the documented kubelet v1 API, field numbers included."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from exporter.resolve.proto import generate

# protobuf ships no type information; its descriptor messages are used untyped here.
descriptor_pb2: Any = importlib.import_module("google.protobuf.descriptor_pb2")

# message -> {field: (number, label, type)} as the kubelet pod-resources v1 API documents them.
_R = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_O = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_STR = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_I64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_U64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_MSG = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

DOCUMENTED: dict[str, dict[str, tuple[int, int, int]]] = {
    "ListPodResourcesRequest": {},
    "AllocatableResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": (1, _R, _MSG)},
    "PodResources": {"name": (1, _O, _STR), "namespace": (2, _O, _STR), "containers": (3, _R, _MSG)},
    "ContainerResources": {
        "name": (1, _O, _STR),
        "devices": (2, _R, _MSG),
        "cpu_ids": (3, _R, _I64),
        "memory": (4, _R, _MSG),
        "dynamic_resources": (5, _R, _MSG),
    },
    "ContainerDevices": {
        "resource_name": (1, _O, _STR),
        "device_ids": (2, _R, _STR),
        "topology": (3, _O, _MSG),
    },
    "TopologyInfo": {"nodes": (1, _R, _MSG)},
    "NUMANode": {"ID": (1, _O, _I64)},
    "ContainerMemory": {"memory_type": (1, _O, _STR), "size": (2, _O, _U64), "topology": (3, _O, _MSG)},
    "AllocatableResourcesResponse": {
        "devices": (1, _R, _MSG),
        "cpu_ids": (2, _R, _I64),
        "memory": (3, _R, _MSG),
    },
    "DynamicResource": {
        "claim_name": (2, _O, _STR),
        "claim_namespace": (3, _O, _STR),
        "claim_resources": (4, _R, _MSG),
    },
    "ClaimResource": {
        "cdi_devices": (1, _R, _MSG),
        "driver_name": (2, _O, _STR),
        "pool_name": (3, _O, _STR),
        "device_name": (4, _O, _STR),
    },
    "CDIDevice": {"name": (1, _O, _STR)},
    "GetPodResourcesRequest": {"pod_name": (1, _O, _STR), "pod_namespace": (2, _O, _STR)},
    "GetPodResourcesResponse": {"pod_resources": (1, _O, _MSG)},
}


def _file_proto() -> Any:
    from exporter.resolve.proto.podresources.v1 import api_pb2

    return descriptor_pb2.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)


def test_the_package_is_v1_in_proto3() -> None:
    file_proto = _file_proto()
    assert file_proto.package == "v1"
    assert file_proto.syntax == "proto3"


def test_every_documented_message_and_no_other_is_defined() -> None:
    assert {m.name for m in _file_proto().message_type} == set(DOCUMENTED)


@pytest.mark.parametrize("message", sorted(DOCUMENTED))
def test_message_fields_have_the_documented_numbers_and_types(message: str) -> None:
    (proto,) = [m for m in _file_proto().message_type if m.name == message]
    actual = {f.name: (f.number, f.label, f.type) for f in proto.field}
    assert actual == DOCUMENTED[message]


def test_container_resources_dynamic_resources_is_field_5() -> None:
    from exporter.resolve.proto.podresources.v1 import api_pb2

    field = api_pb2.ContainerResources.DESCRIPTOR.fields_by_name["dynamic_resources"]
    assert field.number == 5
    assert field.message_type.full_name == "v1.DynamicResource"


def test_dynamic_resource_has_no_field_1_and_reserves_it() -> None:
    from exporter.resolve.proto.podresources.v1 import api_pb2

    assert 1 not in api_pb2.DynamicResource.DESCRIPTOR.fields_by_number
    (proto,) = [m for m in _file_proto().message_type if m.name == "DynamicResource"]
    assert [(r.start, r.end) for r in proto.reserved_range] == [(1, 2)]  # end is exclusive


def test_the_service_has_the_documented_methods() -> None:
    (service,) = _file_proto().service
    assert service.name == "PodResourcesLister"
    methods = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in service.method}
    assert methods == {
        "List": (".v1.ListPodResourcesRequest", ".v1.ListPodResourcesResponse", False, False),
        "GetAllocatableResources": (
            ".v1.AllocatableResourcesRequest",
            ".v1.AllocatableResourcesResponse",
            False,
            False,
        ),
        "Get": (".v1.GetPodResourcesRequest", ".v1.GetPodResourcesResponse", False, False),
    }


def test_the_grpc_module_imports_its_messages_by_absolute_package_path() -> None:
    (proto,) = generate.proto_files()
    grpc_module = generate.outputs_for(proto)[2]
    assert grpc_module.name == "api_pb2_grpc.py"
    assert "from exporter.resolve.proto.podresources.v1 import api_pb2 " in grpc_module.read_text()


def test_generating_twice_changes_nothing_the_second_time() -> None:
    generate.generate()
    assert generate.generate() == []
    assert all(generate.is_fresh(proto) for proto in generate.proto_files())
