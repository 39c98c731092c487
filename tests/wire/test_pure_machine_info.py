"""m.bureau.machine_info as a typed value: upstream's full shape round-trips, a field this
version does not know is kept, and each bad field is refused with its name."""

from __future__ import annotations

from typing import Any

import pytest

from bureau.errors import InputError
from bureau.wire.machine_info import CPUInfo, GPUInfo, MachineInfo

# Every field of upstream's MachineInfo, CPUInfo and GPUInfo (lib/schema/events_machine.go).
FULL: dict[str, Any] = {
    "principal": "@bureau/fleet/prod/machine/gpu-1:bureau.local",
    "hostname": "gpu-1",
    "kernel_version": "6.8.0-45-generic",
    "board_vendor": "Supermicro",
    "board_name": "H13SSL-N",
    "cpu": {
        "model": "AMD EPYC 9654 96-Core Processor",
        "sockets": 1,
        "cores_per_socket": 96,
        "threads_per_core": 2,
        "l3_cache_kb": 393216,
    },
    "memory_total_mb": 773000,
    "swap_total_mb": 8191,
    "numa_nodes": 4,
    "gpus": [
        {
            "vendor": "AMD",
            "model_name": "AMD Instinct MI300X",
            "pci_device_id": "0x74a1",
            "pci_slot": "0000:c3:00.0",
            "vram_total_bytes": 206141652992,
            "unique_id": "0x1d2e3f",
            "vbios_version": "113-M3000100-103",
            "vram_vendor": "hynix",
            "pcie_link_width": 16,
            "thermal_limit_critical_millidegrees": 100000,
            "thermal_limit_emergency_millidegrees": 105000,
            "driver": "amdgpu",
        }
    ],
    "labels": {"tier": "gpu"},
    "daemon_version": "bureau 0.1.0",
}


def test_upstreams_full_shape_round_trips() -> None:
    info = MachineInfo.from_json(FULL)
    assert info.gpus[0].vram_total_bytes == 206141652992
    assert info.cpu == CPUInfo("AMD EPYC 9654 96-Core Processor", 1, 96, 2, 393216)
    assert info.to_json() == FULL
    assert MachineInfo.from_json(info.to_json()) == info


def test_a_field_this_version_does_not_know_is_kept() -> None:
    newer = {**FULL, "tpm": {"present": True}}
    assert MachineInfo.from_json(newer).to_json() == newer


def test_empty_fields_are_left_out_as_go_leaves_them_out() -> None:
    info = MachineInfo("@m:s", "h", "k", CPUInfo("", 0, 0, 1), 0, "bureau 0.1.0")
    assert info.to_json() == {
        "principal": "@m:s",
        "hostname": "h",
        "kernel_version": "k",
        "cpu": {"model": "", "sockets": 0, "cores_per_socket": 0, "threads_per_core": 1},
        "memory_total_mb": 0,
        "daemon_version": "bureau 0.1.0",
    }
    assert GPUInfo().to_json() == {
        "vendor": "",
        "pci_device_id": "",
        "pci_slot": "",
        "vram_total_bytes": 0,
        "driver": "",
    }


def _with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    content: dict[str, Any] = {
        **FULL,
        "cpu": dict(FULL["cpu"]),
        "gpus": [dict(FULL["gpus"][0])],
    }
    target: Any = content
    for step in path[:-1]:
        target = target[step]
    if value is _MISSING:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return content


_MISSING = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("principal",), _MISSING, "principal: missing"),
        (("principal",), 7, "principal: not a string"),
        (("hostname",), ["h"], "hostname: not a string"),
        (("memory_total_mb",), "8192", "memory_total_mb: not an integer"),
        (("memory_total_mb",), 1.5, "memory_total_mb: not an integer"),
        (("numa_nodes",), True, "numa_nodes: not an integer"),
        (("swap_total_mb",), -1, "swap_total_mb: negative"),
        (("cpu",), "epyc", "cpu: not a JSON object"),
        (("cpu", "sockets"), "1", "cpu: sockets: not an integer"),
        (("gpus",), {"0": {}}, "gpus: not a list"),
        (("gpus", 0), "mi300x", "gpus[0]: not a JSON object"),
        (("gpus", 0, "vram_total_bytes"), "192G", "gpus[0]: vram_total_bytes: not an integer"),
        (("gpus", 0, "driver"), 1, "gpus[0]: driver: not a string"),
        (("labels",), {"tier": 1}, "labels: not an object of strings"),
        (("labels",), ["tier"], "labels: not an object of strings"),
    ],
)
def test_each_bad_field_is_refused_by_name(
    path: tuple[str | int, ...], value: object, named: str
) -> None:
    with pytest.raises(InputError) as refused:
        MachineInfo.from_json(_with(path, value))
    assert named in str(refused.value)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(InputError, match=r"m\.bureau\.machine_info: not a JSON object"):
        MachineInfo.from_json([FULL])
