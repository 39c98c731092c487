"""``m.bureau.machine_info`` content: upstream's MachineInfo, CPUInfo and GPUInfo
(lib/schema/events_machine.go:179-330), a machine's static inventory. Pure.

Fields Go writes with ``omitempty`` are left out when empty (zero, "" or no entries); the
others are always written. Reading is liberal: a field this version does not know is
kept in ``extra`` and written back, so an operator's tools (upstream's ``bureau machine
label``) and a newer daemon's fields survive our daemon's restart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(where, None, "not a JSON object")
    return value


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str):
        raise InputError(where, key, "missing" if value is None else "not a string")
    return value


def _count(obj: dict[str, Any], key: str, where: str, *, required: bool) -> int:
    value = obj.get(key, None if required else 0)
    # bool is an int in Python; JSON's true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(where, key, "missing" if value is None else "not an integer")
    if value < 0:
        raise InputError(where, key, "negative")
    return value


def _omit_empty(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class CPUInfo:
    model: str
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    l3_cache_kb: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "sockets": self.sockets,
            "cores_per_socket": self.cores_per_socket,
            "threads_per_core": self.threads_per_core,
        } | _omit_empty({"l3_cache_kb": self.l3_cache_kb})

    @classmethod
    def from_json(cls, value: object, where: str = "cpu") -> CPUInfo:
        obj = _object(value, where)
        return cls(
            model=_text(obj, "model", where, required=False),
            sockets=_count(obj, "sockets", where, required=False),
            cores_per_socket=_count(obj, "cores_per_socket", where, required=False),
            threads_per_core=_count(obj, "threads_per_core", where, required=False),
            l3_cache_kb=_count(obj, "l3_cache_kb", where, required=False),
        )


_GPU_TEXTS = ("vendor", "model_name", "pci_device_id", "pci_slot", "unique_id")
_GPU_TEXTS_2 = ("vbios_version", "vram_vendor", "driver")
_GPU_COUNTS = (
    "vram_total_bytes",
    "pcie_link_width",
    "thermal_limit_critical_millidegrees",
    "thermal_limit_emergency_millidegrees",
)
# Written even when empty, as Go does for fields without omitempty.
_GPU_ALWAYS = frozenset({"vendor", "pci_device_id", "pci_slot", "vram_total_bytes", "driver"})


@dataclass(frozen=True)
class GPUInfo:
    vendor: str = ""
    model_name: str = ""
    pci_device_id: str = ""
    pci_slot: str = ""
    unique_id: str = ""
    vbios_version: str = ""
    vram_vendor: str = ""
    driver: str = ""
    vram_total_bytes: int = 0
    pcie_link_width: int = 0
    thermal_limit_critical_millidegrees: int = 0
    thermal_limit_emergency_millidegrees: int = 0

    def to_json(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in (*_GPU_TEXTS, *_GPU_TEXTS_2, *_GPU_COUNTS)}
        return {k: v for k, v in values.items() if v or k in _GPU_ALWAYS}

    @classmethod
    def from_json(cls, value: object, where: str = "gpu") -> GPUInfo:
        obj = _object(value, where)

        def text(key: str) -> str:
            return _text(obj, key, where, required=False)

        def count(key: str) -> int:
            return _count(obj, key, where, required=False)

        return cls(
            vendor=text("vendor"),
            model_name=text("model_name"),
            pci_device_id=text("pci_device_id"),
            pci_slot=text("pci_slot"),
            unique_id=text("unique_id"),
            vbios_version=text("vbios_version"),
            vram_vendor=text("vram_vendor"),
            driver=text("driver"),
            vram_total_bytes=count("vram_total_bytes"),
            pcie_link_width=count("pcie_link_width"),
            thermal_limit_critical_millidegrees=count("thermal_limit_critical_millidegrees"),
            thermal_limit_emergency_millidegrees=count("thermal_limit_emergency_millidegrees"),
        )


_KNOWN = frozenset(
    {
        "principal",
        "hostname",
        "kernel_version",
        "board_vendor",
        "board_name",
        "cpu",
        "memory_total_mb",
        "swap_total_mb",
        "numa_nodes",
        "gpus",
        "labels",
        "daemon_version",
    }
)


@dataclass(frozen=True)
class MachineInfo:
    principal: str
    hostname: str
    kernel_version: str
    cpu: CPUInfo
    memory_total_mb: int
    daemon_version: str
    board_vendor: str = ""
    board_name: str = ""
    swap_total_mb: int = 0
    numa_nodes: int = 0
    gpus: tuple[GPUInfo, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # Fields this version does not know, written back as they came.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "principal": self.principal,
            "hostname": self.hostname,
            "kernel_version": self.kernel_version,
        }
        out |= _omit_empty({"board_vendor": self.board_vendor, "board_name": self.board_name})
        out["cpu"] = self.cpu.to_json()
        out["memory_total_mb"] = self.memory_total_mb
        out |= _omit_empty(
            {
                "swap_total_mb": self.swap_total_mb,
                "numa_nodes": self.numa_nodes,
                "gpus": [gpu.to_json() for gpu in self.gpus],
                "labels": dict(self.labels),
            }
        )
        out["daemon_version"] = self.daemon_version
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, value: object, where: str = "m.bureau.machine_info") -> MachineInfo:
        obj = _object(value, where)
        gpus = obj.get("gpus", [])
        if gpus is None:
            gpus = []  # Go's nil slice, were omitempty ever dropped
        if not isinstance(gpus, list):
            raise InputError(where, "gpus", "not a list")
        labels = obj.get("labels", {}) or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InputError(where, "labels", "not an object of strings")
        return cls(
            principal=_text(obj, "principal", where, required=True),
            hostname=_text(obj, "hostname", where, required=False),
            kernel_version=_text(obj, "kernel_version", where, required=False),
            cpu=CPUInfo.from_json(obj.get("cpu", {}), f"{where}.cpu"),
            memory_total_mb=_count(obj, "memory_total_mb", where, required=False),
            daemon_version=_text(obj, "daemon_version", where, required=False),
            board_vendor=_text(obj, "board_vendor", where, required=False),
            board_name=_text(obj, "board_name", where, required=False),
            swap_total_mb=_count(obj, "swap_total_mb", where, required=False),
            numa_nodes=_count(obj, "numa_nodes", where, required=False),
            gpus=tuple(GPUInfo.from_json(g, f"{where}.gpus[{i}]") for i, g in enumerate(gpus)),
            labels=dict(labels),
            extra={k: v for k, v in obj.items() if k not in _KNOWN},
        )
