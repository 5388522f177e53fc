"""Capture real guest files as parser fixtures (tests/fixtures/vm/).

``capture_fixtures(assets, outdir)`` boots the guest three times:

A. memory: the boot-time state files, kexec_crash_loaded before/after
   `kexec -p`, a 1 GiB DIMM hot-add (uevents recorded), the state after it,
   a `kexec -p` reload and a crash: /proc/vmcore's header with the DIMM.
B. memory hot-remove (uevents recorded), then cpu: a CPU hot-add + online (uevents recorded), its crash notes, a
   `kexec -p` load and a crash: /proc/vmcore's header with three CPU notes.
C. boot: `kexec -p` at boot and a crash: /proc/vmcore's header of the boot state.

Run it through ``tools/vm/capture-fixtures`` to refresh the checked-in files;
the VM test ``test_fixtures_capture`` runs it into a temporary directory and
checks the shape of what it got.  It writes README.md itself, from CAPTURED
below, so the README always says how each file was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from testbed.harness import GIB, Guest, GuestConfig, VmAssets, uevent_fields

KCORE_HEAD = 4096


@dataclass(frozen=True, slots=True)
class Captured:
    path: str
    how: str


def _memory_online(msg: bytes) -> bool:
    f = uevent_fields(msg)
    return f.get("SUBSYSTEM") == "memory" and f.get("ACTION") == "online"


def _memory_remove(msg: bytes) -> bool:
    f = uevent_fields(msg)
    return f.get("SUBSYSTEM") == "memory" and f.get("ACTION") == "remove"


def _cpu_online(msg: bytes) -> bool:
    f = uevent_fields(msg)
    return f.get("SUBSYSTEM") == "cpu" and f.get("ACTION") == "online"


class _Writer:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.captured: list[Captured] = []

    def put(self, rel: str, data: bytes, how: str) -> None:
        p = self.outdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.captured.append(Captured(rel, how))

    def uevents(self, rel_dir: str, messages: list[tuple[str, bytes]], how: str) -> None:
        d = self.outdir / rel_dir
        if d.exists():
            for old in d.glob("*.bin"):
                old.unlink()
        for name, msg in messages:
            self.put(f"{rel_dir}/{name}", msg, how)


def _state_files(g: Guest, w: _Writer, suffix: str, note: str) -> None:
    w.put(f"iomem.{suffix}", g.fetch("/proc/iomem"), f"`cat /proc/iomem` {note}")
    w.put(
        f"kcore-head.{suffix}.bin",
        g.fetch("/proc/kcore", max_bytes=KCORE_HEAD),
        f"`head -c {KCORE_HEAD} /proc/kcore` (ELF header + program headers) {note}",
    )
    listing = g.run(
        "cd /sys/devices/system/memory && for b in memory*; do "
        "echo $b $(cat $b/phys_index) $(cat $b/state) $(cat $b/valid_zones 2>/dev/null); done"
    ).output
    w.put(f"memory-blocks.{suffix}", listing, f"per block: name, phys_index, state, valid_zones {note}")
    for f in ("online", "possible", "present"):
        w.put(f"cpu-{f}.{suffix}", g.fetch(f"/sys/devices/system/cpu/{f}"), f"`cat /sys/devices/system/cpu/{f}` {note}")


def _cpu_notes(g: Guest, w: _Writer, cpu: int, note: str) -> None:
    for f in ("crash_notes", "crash_notes_size"):
        w.put(f"cpu{cpu}.{f}", g.fetch(f"/sys/devices/system/cpu/cpu{cpu}/{f}"), f"`cat /sys/devices/system/cpu/cpu{cpu}/{f}` {note}")


def capture_fixtures(assets: VmAssets, outdir: Path) -> list[Captured]:
    outdir.mkdir(parents=True, exist_ok=True)
    w = _Writer(outdir)
    kernel = f"{assets.package} {assets.package_version} ({assets.kernel_release})"

    # A: memory
    with Guest(assets, GuestConfig(), name="fixtures-memory") as g:
        w.put("uname-r", g.fetch("/proc/sys/kernel/osrelease"), "`cat /proc/sys/kernel/osrelease` in the guest")
        w.put("vmcoreinfo", g.fetch("/sys/kernel/vmcoreinfo"), "`cat /sys/kernel/vmcoreinfo` (hex address, hex size)")
        w.put(
            "block_size_bytes",
            g.fetch("/sys/devices/system/memory/block_size_bytes"),
            "`cat /sys/devices/system/memory/block_size_bytes` (hex, no 0x)",
        )
        _state_files(g, w, "boot", "at boot (1 GiB, 2 CPUs)")
        for cpu in g.online_cpus():
            _cpu_notes(g, w, cpu, "at boot")
        for f in ("cpu", "memory"):
            path = f"/sys/devices/system/{f}/crash_hotplug"
            if g.exists(path):
                w.put(f"{f}.crash_hotplug", g.fetch(path), f"`cat {path}`")
        w.put("kexec_crash_loaded.before-load", g.fetch("/sys/kernel/kexec_crash_loaded"), "before any `kexec -p`")
        g.kexec_load_crash("kexec_load")
        w.put("kexec_crash_loaded.after-load", g.fetch("/sys/kernel/kexec_crash_loaded"), "after `kexec -p`")
        w.put("kexec_crash_size", g.fetch("/sys/kernel/kexec_crash_size"), "`cat /sys/kernel/kexec_crash_size` after `kexec -p`")
        rec = g.record_uevents("uevents-memory")
        dimm = g.hotplug_dimm(GIB)
        rec.wait_for(8, _memory_online)
        w.uevents(
            "uevents/memory-hot-add-1g",
            rec.stop(),
            "raw NETLINK_KOBJECT_UEVENT messages (tools/vm/uevent-listen.py) during a QMP hot-add of a 1 GiB pc-dimm "
            "(object-add memory-backend-ram + device_add pc-dimm; memhp_default_state=online_movable)",
        )
        _state_files(g, w, "after-dimm-1g", f"after hot-adding a 1 GiB DIMM at {dimm.addr:#x}")
        g.kexec_load_crash("kexec_load")
        cap = g.crash_and_capture()
        w.put(
            "vmcore-head.after-dimm-1g-reload.bin",
            cap.vmcore.raw,
            "capture kernel's /proc/vmcore, ELF header through the end of the PT_NOTE segment, after `kexec -p` at boot, "
            "a 1 GiB DIMM hot-add and a second `kexec -p` (tools/vm/capture)",
        )
        w.put("capture-cmdline.after-dimm-1g-reload", cap.cmdline.encode() + b"\n", "capture kernel's /proc/cmdline")

    # B: memory hot-remove, then cpu
    with Guest(assets, GuestConfig(), name="fixtures-cpu") as g:
        dimm = g.hotplug_dimm(GIB)
        rec = g.record_uevents("uevents-memory-remove")
        g.unplug_dimm(dimm)
        rec.wait_for(8, _memory_remove)
        w.uevents(
            "uevents/memory-hot-remove-1g",
            rec.stop(),
            "raw uevents during a QMP hot-remove (device_del; the guest offlines and ACPI-ejects) of a 1 GiB pc-dimm",
        )
        w.put("iomem.after-dimm-1g-remove", g.fetch("/proc/iomem"), "`cat /proc/iomem` after hot-adding then removing a 1 GiB DIMM")
        rec = g.record_uevents("uevents-cpu")
        cpu = g.hotplug_cpu(online=True)
        rec.wait_for(1, _cpu_online)
        w.uevents(
            "uevents/cpu-hot-add-online",
            rec.stop(),
            f"raw uevents during a QMP CPU hot-add (query-hotpluggable-cpus + device_add) and "
            f"`echo 1 > /sys/devices/system/cpu/cpu{cpu}/online`",
        )
        _cpu_notes(g, w, cpu, "after hot-add + online")
        for f in ("online", "present"):
            w.put(f"cpu-{f}.after-cpu-hot-add", g.fetch(f"/sys/devices/system/cpu/{f}"), "after one CPU hot-add + online")
        g.kexec_load_crash("kexec_load")
        cap = g.crash_and_capture()
        w.put(
            "vmcore-head.after-cpu-hot-add-load.bin",
            cap.vmcore.raw,
            "capture kernel's /proc/vmcore head after a CPU hot-add + online, then `kexec -p` (3 CPUs)",
        )

    # C: boot
    with Guest(assets, GuestConfig(), name="fixtures-boot") as g:
        g.kexec_load_crash("kexec_load")
        cap = g.crash_and_capture()
        w.put("vmcore-head.boot.bin", cap.vmcore.raw, "capture kernel's /proc/vmcore head after `kexec -p` at boot")

    _write_readme(outdir, w.captured, kernel, assets)
    return w.captured


def _write_readme(outdir: Path, captured: list[Captured], kernel: str, assets: VmAssets) -> None:
    rows: dict[str, str] = {}
    for c in captured:
        key = c.path.rsplit("/", 1)[0] + "/*.bin" if c.path.startswith("uevents/") else c.path
        rows.setdefault(key, c.how)
    lines = [
        "# Real files from the VM tier's guest",
        "",
        "Captured by `tools/vm/capture-fixtures` (tests/vm/fixtures_capture.py) from a qemu (TCG) guest:",
        f"kernel `{kernel}`, `-m 1G,slots=8,maxmem=16G -smp 2,maxcpus=8`,",
        "cmdline `console=ttyS0 crashkernel=256M memhp_default_state=online_movable panic=1`,",
        "kexec-tools 2.0.25 (Debian bookworm `/sbin/kexec`), capture kernel = the same kernel with",
        "`acpi_no_memhotplug nr_cpus=1 irqpoll reset_devices`.",
        "Do not edit by hand: re-run `sudo tools/vm/capture-fixtures` (about a minute) to refresh.",
        "",
        "Files absent here are absent in this kernel: Linux 6.1 has no",
        "`/sys/devices/system/{cpu,memory}/crash_hotplug` (CONFIG_CRASH_HOTPLUG is 6.6+).",
        "",
        "Formats seen here (parsers take note): `cpuN/crash_notes` is a hex physical address",
        "without 0x; `crash_notes_size` is decimal; `vmcoreinfo` is `0x<addr> <size in hex, no 0x>`;",
        "`block_size_bytes` is hex without 0x.  The `vmcore-head.*.bin` files are what the capture",
        "kernel serves, not the raw elfcorehdr: `fs/proc/vmcore.c` merges all PT_NOTEs into one",
        "(real note sizes) and rewrites offsets; count CPUs by the NT_PRSTATUS notes inside it.",
        "The uevent files are whole netlink datagrams: `ACTION@DEVPATH\\0KEY=VALUE\\0...`.",
        "",
        "| file | how |",
        "| --- | --- |",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in rows.items()]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")
    (outdir / "MANIFEST.json").write_text(
        json.dumps({"kernel": kernel, "files": sorted(c.path for c in captured)}, indent=1) + "\n"
    )
