"""The sizes ``kdump-coalesce bench vm-resize`` runs at (``--dimms N`` or ``--scale NAME``).

- ``--dimms N`` (issue 7): N x 1 GiB DIMMs on a 1-2 GiB guest; every handler
  started at once; no cut-off.
- ``--scale ci`` (issue 15, the VM tier): 512 blocks as ONE 64 GiB DIMM on a
  4 GiB guest (kernel-facts 10: the largest a 4 GiB guest takes with
  ``memmap_on_memory``), kdump-coalesce/kexec and udev-serial, udev-serial
  cut off after 24 reloads: enough to check its one-reload-per-block
  behaviour, not the 512 reloads (~10 min under TCG).
- ``--scale rfc`` (issue 15): the RFC's 32 GiB -> 512 GiB, 3840 blocks of
  128 MiB, on a 32 GiB guest whose main RAM comes from a ``reserve=off``
  backend (-m 32G does not start on this 24 GiB host otherwise), as ONE
  480 GiB DIMM (``1x480g``, the RFC's first case) and as 240 x 2 GiB DIMMs
  (``240x2g``: the RFC's second case was 480 x 1 GiB, but qemu's pc-dimm
  slots stop at 256 (ACPI); 240 DIMMs keep what that case is about, one ACPI
  hot-add and its QMP round trip per DIMM, a burst of many small bursts;
  virtio-mem would not: it is one device whose driver adds blocks itself,
  "System RAM (virtio_mem)" driver-managed memory, without per-DIMM ACPI
  events).  Every DIMM's backend has ``reserve: false``, so the host backs
  only what the guest touches (its memmap, ~7.5 GiB for 480 GiB: qemu is ~9
  GiB RSS).  The guest's command line adds ``memory_hotplug.memmap_on_memory=1``
  (the memmap of each hot-added block lives in the block itself, not in boot
  RAM).

At the ci and rfc scales the distro handlers run at most 20 at a time, as
udevd's ``children_max`` (systemd 252 ``manager_set_default_children_max``:
``cpu_count * 2 + 16``, capped by RAM / 128 MiB) would on a 2-vCPU guest:
with 3840 uevents and a blocking flock per handler (udev-serial), starting
them all at once would hold 3840 processes that udevd never would.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CI", "LAYOUTS", "RFC", "SCALES", "Layout", "Scale", "legacy_scale"]

MEMMAP_ON_MEMORY = "memory_hotplug.memmap_on_memory=1"
UDEVD_CHILDREN_MAX = 2 * 2 + 16  # 2 vCPUs


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    count: int
    size_gib: int

    @property
    def total_gib(self) -> int:
        return self.count * self.size_gib

    def describe(self) -> str:
        return f"{self.count} x {self.size_gib} GiB" if self.count > 1 else f"one {self.size_gib} GiB DIMM"


@dataclass(frozen=True, slots=True)
class Scale:
    name: str
    base_mib: int
    layouts: tuple[Layout, ...]
    strategies: tuple[str, ...]
    main_backend: bool = False  # main RAM from a reserve=off backend
    append: tuple[str, ...] = ()
    max_workers: int = 0
    serial_cutoff: int = 0  # udev-serial: reloads before the cut-off (0: none)
    timeout: float = 0.0  # per strategy (0: --vm-timeout)
    legacy: bool = False  # --dimms N: the issue-7 bench as it was


ALL = ("udev-serial", "udev-throttle", "load-once", "kdump-coalesce/kexec", "kdump-coalesce/kexec-fast", "kernel")
LAYOUTS = {
    "1x480g": Layout("1x480g", 1, 480),
    "240x2g": Layout("240x2g", 240, 2),
    "1x64g": Layout("1x64g", 1, 64),
}
CI = Scale(
    name="ci",
    base_mib=4096,
    layouts=(LAYOUTS["1x64g"],),
    strategies=("udev-serial", "kdump-coalesce/kexec"),
    append=(MEMMAP_ON_MEMORY,),
    max_workers=UDEVD_CHILDREN_MAX,
    serial_cutoff=12,  # each cycle is a full unload + ~2.5 s reload under TCG; 12 show the per-block pattern
    timeout=600.0,
)
RFC = Scale(
    name="rfc",
    base_mib=32 * 1024,
    layouts=(LAYOUTS["1x480g"], LAYOUTS["240x2g"]),
    strategies=ALL,
    main_backend=True,
    append=(MEMMAP_ON_MEMORY,),
    max_workers=UDEVD_CHILDREN_MAX,
    serial_cutoff=100,
    timeout=1800.0,
)
SCALES = {s.name: s for s in (CI, RFC)}


def legacy_scale(dimms: int) -> Scale:
    return Scale(
        name="dimms",
        base_mib=1024 if dimms <= 12 else 2048,
        layouts=(Layout(f"{dimms}x1g", dimms, 1),),
        strategies=ALL[:5],
        legacy=True,
    )
