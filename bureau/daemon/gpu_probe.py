"""The machine's GPUs for ``m.bureau.machine_info``, read from sysfs and procfs as
upstream's probers read them (lib/hwinfo/drm.go, amdgpu/info.go, nvidia/info.go): each
DRM card (``card0``, not ``card0-DP-1`` or ``renderD128``) driven by ``amdgpu``,
``nvidia`` or ``nouveau``. Anything unreadable is zero or empty, never an error: a
machine without GPUs, or without sysfs, is a valid machine. Other drivers (i915, xe, ...)
are left out, as upstream leaves them out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bureau.wire.machine_info import GPUInfo

VENDORS = {"1002": "AMD", "10de": "NVIDIA", "8086": "Intel"}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _number(path: Path) -> int:
    text = _read(path)
    try:
        return max(int(text), 0)
    except ValueError:
        return 0


def is_card(name: str) -> bool:
    return name.startswith("card") and name[4:].isdigit()


def driver_of(device: Path) -> str:
    try:
        return (device / "driver").readlink().name
    except OSError:
        return ""


def pci_identity(device: Path) -> tuple[str, str, str]:
    """(vendor name, "0x<device id>", PCI slot) from the device's uevent."""
    vendor_id = device_id = slot = ""
    for line in _read(device / "uevent").splitlines():
        key, _, value = line.partition("=")
        if key == "PCI_ID":
            ids = value.split(":", 1)
            if len(ids) == 2:
                vendor_id, device_id = ids[0].lower(), ids[1].lower()
        elif key == "PCI_SLOT_NAME":
            slot = value
    vendor = VENDORS.get(vendor_id, f"0x{vendor_id}" if vendor_id else "")
    return vendor, f"0x{device_id}" if device_id else "", slot


def thermal_limits(device: Path) -> tuple[int, int]:
    """(critical, emergency) in millidegrees, from the first hwmon that has either."""
    try:
        monitors = sorted(p for p in (device / "hwmon").iterdir() if p.name.startswith("hwmon"))
    except OSError:
        return 0, 0
    for monitor in monitors:
        limits = _number(monitor / "temp1_crit"), _number(monitor / "temp1_emergency")
        if any(limits):
            return limits
    return 0, 0


def _with_nvidia_details(gpu: GPUInfo, proc: Path) -> GPUInfo:
    """Model, UUID and VBIOS from the proprietary driver's per-GPU information file."""
    found = {"Model": "", "GPU UUID": "", "Video BIOS": ""}
    for line in _read(proc / "driver/nvidia/gpus" / gpu.pci_slot / "information").splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() in found:
            found[key.strip()] = value.strip()
    return replace(
        gpu,
        model_name=found["Model"],
        unique_id=found["GPU UUID"],
        vbios_version=found["Video BIOS"],
    )


def _gpu(device: Path, driver: str, proc: Path) -> GPUInfo:
    vendor, device_id, slot = pci_identity(device)
    critical, emergency = thermal_limits(device)
    gpu = GPUInfo(
        vendor=vendor,
        pci_device_id=device_id,
        pci_slot=slot,
        driver=driver,
        pcie_link_width=_number(device / "current_link_width"),
        thermal_limit_critical_millidegrees=critical,
        thermal_limit_emergency_millidegrees=emergency,
    )
    if driver == "amdgpu":
        return replace(
            gpu,
            vram_total_bytes=_number(device / "mem_info_vram_total"),
            unique_id=_read(device / "unique_id"),
            vbios_version=_read(device / "vbios_version"),
            vram_vendor=_read(device / "mem_info_vram_vendor"),
        )
    if driver == "nvidia" and slot:
        return _with_nvidia_details(gpu, proc)
    return gpu


def probe_gpus(sys_root: Path, proc: Path) -> tuple[GPUInfo, ...]:
    """Every AMD and NVIDIA card, AMD's first as upstream's daemon runs its probers."""
    drm = sys_root / "class/drm"
    try:
        cards = sorted((p for p in drm.iterdir() if is_card(p.name)), key=lambda p: int(p.name[4:]))
    except OSError:
        return ()
    found = [(driver_of(card / "device"), card / "device") for card in cards]
    amd = [_gpu(device, driver, proc) for driver, device in found if driver == "amdgpu"]
    nvidia = [
        _gpu(device, driver, proc) for driver, device in found if driver in ("nvidia", "nouveau")
    ]
    return (*amd, *nvidia)
