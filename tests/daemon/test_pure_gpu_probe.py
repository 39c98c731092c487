"""GPU inventory for m.bureau.machine_info, read from a synthetic sysfs and procfs laid out
as the kernel lays them out (upstream tests its probers the same way:
lib/hwinfo/amdgpu, lib/hwinfo/nvidia). A real GPU is not on the machines tests run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bureau.daemon import gpu_probe, machine_info
from bureau.wire.machine_info import GPUInfo, MachineInfo


def _card(
    sys_root: Path, name: str, driver: str, uevent: str, files: dict[str, str] | None = None
) -> Path:
    """/sys/class/drm/<name>/device: a PCI device directory with its driver link."""
    device = sys_root / "devices/pci0000:00" / name
    (sys_root / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
    device.mkdir(parents=True)
    (device / "driver").symlink_to(sys_root / "bus/pci/drivers" / driver)
    (device / "uevent").write_text(uevent)
    for relative, text in (files or {}).items():
        (device / relative).parent.mkdir(parents=True, exist_ok=True)
        (device / relative).write_text(text)
    card = sys_root / "class/drm" / name
    card.mkdir(parents=True)
    (card / "device").symlink_to(device)
    return device


AMD_UEVENT = "DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_ID=1002:744A\nPCI_SLOT_NAME=0000:c3:00.0\n"
NVIDIA_UEVENT = "DRIVER=nvidia\nPCI_ID=10DE:2684\nPCI_SLOT_NAME=0000:01:00.0\n"


def test_amd_card_reads_every_field(tmp_path: Path) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _card(
        sys_root,
        "card0",
        "amdgpu",
        AMD_UEVENT,
        {
            "mem_info_vram_total": "48301604864\n",
            "unique_id": "a1b2c3d4\n",
            "vbios_version": "113-APM7489-DS2-100\n",
            "mem_info_vram_vendor": "samsung\n",
            "current_link_width": "16\n",
            "hwmon/hwmon3/temp1_crit": "100000\n",
            "hwmon/hwmon3/temp1_emergency": "105000\n",
        },
    )
    (sys_root / "class/drm/card0-DP-1").mkdir()  # a connector, not a card
    (sys_root / "class/drm/renderD128").mkdir()  # a render node, not a card
    assert gpu_probe.probe_gpus(sys_root, proc) == (
        GPUInfo(
            vendor="AMD",
            pci_device_id="0x744a",
            pci_slot="0000:c3:00.0",
            driver="amdgpu",
            vram_total_bytes=48301604864,
            unique_id="a1b2c3d4",
            vbios_version="113-APM7489-DS2-100",
            vram_vendor="samsung",
            pcie_link_width=16,
            thermal_limit_critical_millidegrees=100000,
            thermal_limit_emergency_millidegrees=105000,
        ),
    )


def test_nvidia_card_takes_model_uuid_and_vbios_from_the_driver(tmp_path: Path) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _card(sys_root, "card1", "nvidia", NVIDIA_UEVENT, {"current_link_width": "8"})
    information = proc / "driver/nvidia/gpus/0000:01:00.0/information"
    information.parent.mkdir(parents=True)
    information.write_text(
        "Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   \t\t 180\n"
        "GPU UUID: \t GPU-5f3c9d2e-0000-1111-2222-333344445555\n"
        "Video BIOS: \t 95.02.18.80.5f\nBus Type: \t PCIe\n"
    )
    [gpu] = gpu_probe.probe_gpus(sys_root, proc)
    assert (gpu.vendor, gpu.pci_device_id, gpu.driver) == ("NVIDIA", "0x2684", "nvidia")
    assert gpu.model_name == "NVIDIA GeForce RTX 4090"
    assert gpu.unique_id == "GPU-5f3c9d2e-0000-1111-2222-333344445555"
    assert gpu.vbios_version == "95.02.18.80.5f"
    assert gpu.pcie_link_width == 8
    assert gpu.vram_total_bytes == 0  # not in sysfs for nvidia; upstream leaves it 0


def test_other_drivers_and_broken_entries_are_left_out(tmp_path: Path) -> None:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _card(sys_root, "card0", "i915", "PCI_ID=8086:46A6\nPCI_SLOT_NAME=0000:00:02.0\n")
    _card(sys_root, "card2", "nouveau", "PCI_ID=10DE:1C82\nPCI_SLOT_NAME=0000:02:00.0\n")
    _card(sys_root, "card10", "amdgpu", "garbage\nPCI_ID=1002\n", {"mem_info_vram_total": "x"})
    (sys_root / "class/drm/card3").mkdir()  # no device link at all
    gpus = gpu_probe.probe_gpus(sys_root, proc)
    # AMD's first, as upstream's daemon runs its probers; unreadable values are zero/empty.
    assert [(g.driver, g.vendor, g.pci_device_id, g.vram_total_bytes) for g in gpus] == [
        ("amdgpu", "", "", 0),
        ("nouveau", "NVIDIA", "0x1c82", 0),
    ]
    assert gpu_probe.probe_gpus(tmp_path / "no-sysfs", proc) == ()


@pytest.mark.parametrize(
    ("uevent", "expected"),
    [
        ("PCI_ID=1002:744A\nPCI_SLOT_NAME=0000:c3:00.0\n", ("AMD", "0x744a", "0000:c3:00.0")),
        ("PCI_ID=8086:46A6\n", ("Intel", "0x46a6", "")),
        ("PCI_ID=1AF4:1050\n", ("0x1af4", "0x1050", "")),
        ("", ("", "", "")),
    ],
)
def test_pci_identity(tmp_path: Path, uevent: str, expected: tuple[str, str, str]) -> None:
    (tmp_path / "uevent").write_text(uevent)
    assert gpu_probe.pci_identity(tmp_path) == expected


def test_published_gpus_have_upstreams_shape(tmp_path: Path) -> None:
    """Go writes vendor, pci_device_id, pci_slot, vram_total_bytes and driver always, the
    rest only when set; the event reads back to the same value."""
    sys_root = tmp_path / "sys"
    _card(sys_root, "card0", "nouveau", "PCI_ID=10DE:1C82\nPCI_SLOT_NAME=0000:02:00.0\n")
    info = machine_info.probe("@m:bureau.local", sys_root=sys_root, proc=tmp_path / "proc")
    content = info.to_json()
    assert content["gpus"] == [
        {
            "vendor": "NVIDIA",
            "pci_device_id": "0x1c82",
            "pci_slot": "0000:02:00.0",
            "vram_total_bytes": 0,
            "driver": "nouveau",
        }
    ]
    assert MachineInfo.from_json(content) == info
