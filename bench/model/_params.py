"""The model's parameters, each with the figure it comes from.

Three kinds of default:

- *measured*: a figure someone measured and wrote down (the RFC's table, this
  project's VM runs in ../shared/docs/kernel-facts.md section 7, this repo's
  ``bench/coalesce_throughput.py``);
- *calibrated*: fitted by ``bench/calibrate.py`` so that the model reproduces
  ONE published figure; the other figures are then predictions that test the
  model (``PUBLISHED`` below says which figure calibrated what);
- *assumed*: no figure exists; the value is an order-of-magnitude guess, and
  the comment says what it stands for.

The published settle figures (``PUBLISHED``) come from Eric DeVolder, "[RFC]:
kexec: change to handle memory/cpu changes", LKML, 2020-12-14: a QEMU/KVM
guest resized from 32 GiB to 512 GiB (3840 blocks of 128 MiB), "the number of
seconds it took for the system to process all of the 3840 memblocks":

               1 x 480 GiB DIMM    480 x 1 GiB DIMMs
    RHEL7           181 s               389 s          (3840 reloads)
    RHEL8            86 s               419 s          (kdump-udev-throttler)

RHEL7's rule runs ``systemd-run kdumpctl reload`` for every event, serialised
by kdumpctl's lock: the same behaviour as Debian's blocking-flock rule, which
is what the ``udev-serial`` strategy models.  RHEL8 is ``udev-throttle``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ground.errors import ConfigError


def _p(default: float, source: str) -> Any:
    return field(default=default, metadata={"source": source})


@dataclass(frozen=True, slots=True)
class ModelParams:
    # -- the guest ----------------------------------------------------------
    cpus: float = _p(
        1.0,
        "assumed: effective CPUs for the work that matters. Every piece of it is serialised on a "
        "single-threaded resource (device_hotplug_lock for onlining, systemd PID 1 for every "
        "systemd-run, the kexec lock and the distro's flock for reloads), so the model folds it onto "
        "one processor-sharing CPU; the RFC does not give the guest's vCPU count",
    )
    block_s: float = _p(
        0.010,
        "measured: CPU to online one 128 MiB block (kernel hotplug path + the uevent), "
        "kernel-facts.md section 7: 8 GiB = 64 blocks online in 0.65 s, 15 GiB in 1.36 s (10-11 ms/block)",
    )
    dimm_latency_s: float = _p(
        0.6653,
        "calibrated (bench/calibrate.py) on the mean of the RFC's 480 x 1 GiB figures (389 s, 419 s): "
        "the QMP -> ACPI -> guest -> QMP round trip per DIMM that the RFC names as the reason both "
        "take ~400 s; host-side latency, not guest CPU",
    )
    # -- udev ---------------------------------------------------------------
    spawn_s: float = _p(
        0.00945,
        "calibrated (bench/calibrate.py) on RHEL8 1 x 480 GiB = 86 s: CPU of one udev RUN/PROGRAM "
        "start (fork/exec, systemd-run's D-Bus round trip to PID 1, bash, 'systemctl is-active', flock)",
    )
    # -- reloads --------------------------------------------------------------
    kexec_load_s: float = _p(
        0.0207,
        "calibrated (bench/calibrate.py) on RHEL7 1 x 480 GiB = 181 s for 3840 serialised reloads "
        "(47 ms per event in all): CPU of one 'kexec -p' on the RFC's KVM guest (the same load takes "
        "1.25 s under TCG here, kernel-facts.md section 7)",
    )
    kexec_unload_s: float = _p(0.002, "assumed: 'kexec -p -u' is one syscall that frees the image (~ms)")
    syscall_fraction: float = _p(
        0.14,
        "measured: share of a 'kexec -p' spent inside kexec_load(2) (the window when the old image is "
        "already freed): at most 0.17 s of 1.25 s, kernel-facts.md section 7 ('kexec -i -p' 0.17 s, "
        "'kexec -p' 1.25 s, the rest is user-space SHA-256 before the syscall)",
    )
    script_s: float = _p(
        0.005,
        "assumed: kdump-config's own shell work per reload (check_kdump_support, symlinks, sysctl cmp)",
    )
    kdumpctl_reload_s: float = _p(
        0.5,
        "measured: 'kdumpctl reload' takes 0.5-1 s (kernel-facts.md section 1); 0.5 s of CPU, which the "
        "contention in the model stretches to the 0.5-1 s seen",
    )
    suse_load_s: float = _p(
        0.5,
        "assumed: SUSE's load.sh (kdumptool + kexec) as heavy as 'kdumpctl reload'; no published figure",
    )
    # -- the throttler (kdump-utils kdump-udev-throttler) ----------------------
    throttle_sleep_s: float = _p(1.0, "kdump-udev-throttler: 'sleep 1'")
    settle_timeout_s: float = _p(3.0, "kdump-udev-throttler: 'udevadm settle --timeout 3'")
    # -- the kernel (CONFIG_CRASH_HOTPLUG) ------------------------------------
    kernel_rebuild_s: float = _p(
        0.0005,
        "assumed: one in-kernel elfcorehdr rebuild (walk System RAM, write the header into the crash "
        "region) under the kexec lock, ~0.5 ms",
    )
    sysfs_lock_s: float = _p(
        20e-6,
        "assumed: how long a read of /sys/devices/system/{cpu,memory}/crash_hotplug holds "
        "__crash_hotplug_lock and the kexec lock (crash_check_hotplug_support), ~20 us; an update "
        "waits for it on __crash_hotplug_lock, it is not dropped",
    )
    # -- kdump-coalesce ----------------------------------------------------------
    coalesce_event_s: float = _p(
        12e-6,
        "measured: bench/coalesce_throughput.py, trio pipeline ~85,000 events/s on this host",
    )
    bpf_event_s: float = _p(2e-6, "assumed: one BPF program run + ring buffer record per event, ~2 us")
    updater_s: float = _p(
        0.002,
        "assumed: the updater's live-state snapshot and header build before the load (~2 ms)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ConfigError(f"--set {f.name}", f"must be >= 0, got {value}")
        if self.cpus <= 0:
            raise ConfigError("--set cpus", "must be > 0")
        if not 0 < self.syscall_fraction <= 1:
            raise ConfigError("--set syscall_fraction", "must be in (0, 1]")

    @staticmethod
    def source(name: str) -> str:
        for f in fields(ModelParams):
            if f.name == name:
                return str(f.metadata["source"])
        raise KeyError(name)

    def with_overrides(self, overrides: dict[str, str]) -> ModelParams:
        """``--set NAME=VALUE`` pairs; an unknown name or a non-number is a ConfigError."""
        known = {f.name for f in fields(self)}
        values: dict[str, float] = {}
        for name, text in overrides.items():
            if name not in known:
                raise ConfigError(f"--set {name}", f"unknown model parameter (known: {', '.join(sorted(known))})")
            try:
                values[name] = float(text)
            except ValueError:
                raise ConfigError(f"--set {name}", f"not a number: {text!r}") from None
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Published:
    strategy: str
    scenario: str
    total_s: float
    what: str
    role: str  # "calibrates <param>" or "prediction"


# Which published figure calibrated which parameter, and which are predictions.
PUBLISHED: tuple[Published, ...] = (
    Published("udev-throttle", "resize-1x480g", 86.0, "RHEL8 (throttler), 1 x 480 GiB", "calibrates spawn_s"),
    Published("udev-serial", "resize-1x480g", 181.0, "RHEL7 (per-event reload), 1 x 480 GiB", "calibrates kexec_load_s"),
    Published("udev-throttle", "resize-480x1g", 419.0, "RHEL8 (throttler), 480 x 1 GiB", "calibrates dimm_latency_s (with the next)"),
    Published("udev-serial", "resize-480x1g", 389.0, "RHEL7 (per-event reload), 480 x 1 GiB", "calibrates dimm_latency_s (with the previous)"),
)
# The model is trusted when every published figure is within this of it: the
# figures are single runs, and the RFC's two 480 x 1 GiB runs, which it calls
# the same round-trip-bound process, already differ by 7.7 %.
TOLERANCE = 0.15
# kdumpctl reload's published wall time, checked against the model's throttle reloads.
KDUMPCTL_RELOAD_RANGE = (0.5, 1.0)
