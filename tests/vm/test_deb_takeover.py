"""The Debian package against the REAL kdump-tools, in one systemd guest.

The guest boots the host's own systemd (PID 1, udevd) on an overlay of the
host root (tests/vm/test_service_systemd.py's rdinit), then installs Debian
bookworm's kdump-tools, makedumpfile and linux-base with dpkg -i (downloaded
on the host with a private apt configuration, tools/vm/fetch-debs: the guest
has no network).  kdump-tools is enabled and loads the capture kernel itself
(kdump-config load, from kdump-tools.service), from /etc/default/kdump-tools
pointing at the VM tier's capture kernel and initramfs.  Its real
50-kdump-tools.rules runs `kdump-config try-reload` for every memory block.

Every kexec_load/kexec_file_load in the guest, by anyone, is recorded by an
independent BPF witness (tools/vm/kexec-log.py, BCC with Debian's python3,
not the project's code): caller, its parent, result, and the elfcorehdr
segment copied from the caller's memory.  The guest has a disk (the
overlay's writable layer on ext4, systemd-init's kdc.rw=) and its capture
kernel reboots after the dump (kdc.capture_then=reboot): one machine lives
through three panics, as a host does, its DIMMs still plugged and what it
installed still installed.  Each life starts a witness, then kdump-tools:

1. kdump-tools alone: a 1 GiB DIMM (8 blocks) makes kdump-config try a
   reload once per block; panic: the capture is the last header that
   succeeded, and covers the DIMM exactly where those reloads work (they do
   not on bookworm: udevd's seccomp filter fails them, docs/operations.md)
   or where the kernel rewrites the header (trixie: crash_hotplug 1);
2. `apt-get install ./kdump-coalesce_*.deb` (built from this tree by
   tools/build-deb, lintian errors fail the build): the service is active,
   kdump-tools' rule is masked in /run/udev/rules.d; the next DIMM makes ONE
   load, by the daemon, none by kdump-config (or, on trixie, none at all:
   the kernel owns the header); panic: the capture covers both DIMMs;
3. after the reboot the unit is still enabled and takes over again; then
   `apt-get purge kdump-coalesce`: the rule is back and the files the
   package touched are as before install; the next DIMM makes kdump-config
   try a reload once per block again; panic: the capture covers DIMMs 1 and
   2 (online since the boot), DIMM 3 as in phase 1.

Unless the kernel rewrites the header, each capture's PT_LOADs are exactly
those of the last load the life's witness saw succeed, which is what makes
the witness's per-phase headers evidence.

The same on a Debian trixie root (tools/vm/build-trixie-root: kdump-tools
1.10.7, kexec-tools 2.0.29, systemd 257, in the root since debootstrap) under
trixie's own kernel: `[trixie]` (the root is built by the test when missing,
~2 min; tools/vm-assets fetches the kernel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import CAPTURE_APPEND, GIB, GUEST_XFER, TRIXIE_ROOT, Capture, Dimm, Guest, GuestConfig, VmAssets
from testbed.hotplug import block_size
from tests.vm.test_service_systemd import APPEND, systemd_initrd

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
DIMM = GIB
RULE = "50-kdump-tools.rules"
RUN_MASK = f"/run/udev/rules.d/{RULE}"
# What the package may touch and purge must give back (directories without
# mtime: creating and deleting an entry moves it).
SNAPSHOT = (
    "D='/etc/systemd /etc/udev /lib/udev/rules.d /run/udev/rules.d /etc/kdump-coalesce /usr/share/kdump-coalesce"
    " /var/lib/kdump-coalesce /var/log/kdump-coalesce /var/lib/systemd/deb-systemd-helper-enabled /usr/bin/kdump-coalesce"
    " /lib/systemd/system/kdump-coalesce.service /usr/libexec/kdump-coalesce';"
    " find $D -type d -printf '%p dir %m %U:%G\\n' -o -printf '%p %y %m %U:%G %s %T@ %l\\n' 2>/dev/null | sort;"
    " find $D -type f -exec sha256sum {} + 2>/dev/null | sort"
)


def snapshot(g: Guest) -> str:
    """SNAPSHOT's listing, less the units tools/vm/systemd-init writes afresh
    on every boot (the before and after of purge are two boots apart)."""
    return "\n".join(line for line in g.run(SNAPSHOT).text.splitlines() if "/etc/systemd/system/kdc-" not in line)


def header_ranges(hexdata: str) -> list[tuple[int, int]]:
    """Merged [start, end) of the PT_LOADs in an elfcorehdr's program headers."""
    data = bytes.fromhex(hexdata)
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    assert phentsize == 56 and phoff + phnum * 56 <= len(data), (phoff, phnum, len(data))
    loads = []
    for i in range(phnum):
        p_type, _f, _off, _va, paddr, _fs, memsz, _al = struct.unpack_from("<IIQQQQQQ", data, phoff + i * 56)
        if p_type == 1 and memsz:
            loads.append((paddr, paddr + memsz))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(loads):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def covers(ranges: list[tuple[int, int]], dimm: Dimm) -> bool:
    return any(s <= dimm.addr and dimm.end <= e for s, e in ranges)


@dataclasses.dataclass
class Calls:
    """The witness's records since a mark, paired enter/exit per pid."""

    records: list[dict[str, Any]]

    def loads(self) -> list[dict[str, Any]]:
        """Crash-kernel loads (segments > 0 or kexec_file_load), with their result."""
        out = []
        exits = [r for r in self.records if r["ev"] == "exit"]
        for r in self.records:
            if r["ev"] != "enter" or not (r["flags"] & 1 or r["call"] == "kexec_file_load"):
                continue
            if r["call"] == "kexec_load" and r["nr_segments"] == 0:
                continue  # kexec -p -u: an unload
            ret = next((x["ret"] for x in exits if x["pid"] == r["pid"] and x["ts"] > r["ts"]), None)
            out.append({**r, "ret": ret})
        return out

    def unloads(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["ev"] == "enter" and r["call"] == "kexec_load" and r["nr_segments"] == 0]

    def kdump_config_runs(self) -> list[int]:
        """kdump-config processes that ran kexec (try-reload: `kexec -p -u`, then
        `kexec -p ...`): one per reload attempt, whatever the syscalls did."""
        return sorted({r["ppid"] for r in self.records if r["ev"] == "exec" and r["pcomm"] == "kdump-config"})

    def execs(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["ev"] == "exec"]

    def describe(self) -> str:
        out = []
        for r in self.records:
            if r["ev"] == "exec":
                out.append(f"exec {r['pid']}<-{r['ppid']} {r['pcomm']}: {' '.join(r['argv'])[:120]}")
            else:
                out.append(f"{r['ev']} {r['call']} {r['pid']} {r['comm']}<-{r['pcomm']} segs={r.get('nr_segments')} ret={r.get('ret')}")
        return "\n".join(out)


class Witness:
    """One boot's witness (a panic ends it with its kernel): `name` names its files."""

    def __init__(self, g: Guest, name: str) -> None:
        self.g = g
        self.path = g.xfer / f"{name}.jsonl"
        # Through the exchange directory: a guest on another root (trixie) has no checkout.
        (g.xfer / "kexec-log.py").write_bytes((REPO / "tools" / "vm" / "kexec-log.py").read_bytes())
        script = f"{GUEST_XFER}/kexec-log.py"
        g.run(f"setsid /usr/bin/python3 {script} {GUEST_XFER}/{name}.jsonl </dev/null >{GUEST_XFER}/{name}.out 2>&1 &")
        deadline = time.monotonic() + 120
        while not (g.xfer / f"{name}.jsonl.ready").exists():
            if time.monotonic() > deadline:
                pytest.fail(f"kexec witness {name} not ready:\n" + (g.xfer / f"{name}.out").read_text(errors="replace")[-3000:])
            time.sleep(0.2)

    def last_ok_header(self) -> list[tuple[int, int]] | None:
        """The ranges of the last kexec_load of a crash kernel that succeeded
        this boot, by anyone: what the capture kernel holds unless the kernel
        rewrote it since (crash hotplug)."""
        ok = [x for x in self.since(0).loads() if x["ret"] == 0 and x.get("elfcorehdr")]
        return header_ranges(ok[-1]["elfcorehdr"]) if ok else None

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def mark(self) -> int:
        return len(self.records())

    def since(self, mark: int) -> Calls:
        return Calls(self.records()[mark:])

    def wait(self, mark: int, done: Any, quiet_s: float, timeout: float, what: str) -> Calls:
        """Until done(calls) holds and no new record came for quiet_s seconds."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            calls = self.since(mark)
            now = time.monotonic()
            if len(calls.records) != last:
                last, since = len(calls.records), now
            elif done(calls) and now - since >= quiet_s:
                return calls
            if now > deadline:
                pytest.fail(f"{what}: not there after {timeout:.0f}s; kexec calls since the mark:\n{calls.describe()}")
            time.sleep(0.5)


def build_deb(out: Path) -> Path:
    proc = subprocess.run([str(REPO / "tools" / "build-deb"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"tools/build-deb failed (lintian errors fail it too):\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def fetch_debs(dest: Path) -> list[Path]:
    proc = subprocess.run(
        [str(REPO / "tools" / "vm" / "fetch-debs"), "bookworm", "/var/lib/dpkg/status", str(dest), "kdump-tools", "makedumpfile"],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"tools/vm/fetch-debs failed (needs deb.debian.org):\n{proc.stderr[-3000:]}")
    debs = sorted(dest.glob("*.deb"))
    assert any(d.name.startswith("kdump-tools_") for d in debs), debs
    return debs


@contextlib.contextmanager
def timed(figures: dict[str, Any], key: str) -> Iterator[None]:
    """figures[key]: the block's wall time, in seconds (where a slow run's time went)."""
    t = time.monotonic()
    try:
        yield
    finally:
        figures[key] = round(time.monotonic() - t, 1)


def run_watched(g: Guest, command: str, timeout: float, what: str) -> tuple[int, str]:
    """Run a long guest command in the background and poll for it: when it
    overruns, what systemd and the processes are doing goes into the failure
    (a plain g.run timeout leaves the guest unasked)."""
    tag = f"{GUEST_XFER}/watched"
    g.run(f"rm -f {tag}.rc; setsid sh -c {shlex.quote(command + f' >{tag}.out 2>&1; echo $? >{tag}.rc')} </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + timeout
    while not (g.xfer / "watched.rc").exists():
        if time.monotonic() > deadline:
            state = g.run("systemctl list-jobs --no-pager; ps -eo pid,ppid,etimes,args --forest | tail -60;"
                          " journalctl -b --no-pager -n 40", check=False, timeout=120).text
            out = (g.xfer / "watched.out").read_text(errors="replace")
            pytest.fail(f"{what}: still running after {timeout:.0f}s\n--- output ---\n{out[-3000:]}\n--- guest ---\n{state[-6000:]}")
        time.sleep(1.0)
    rc_text = (g.xfer / "watched.rc").read_text().strip()
    return int(rc_text or "255"), (g.xfer / "watched.out").read_text(errors="replace")


def hot_add_under_kdump_tools(
    g: Guest, witness: Witness, blocks: int, figures: dict[str, Any], phase: str
) -> tuple[Dimm, Calls, list[dict[str, Any]]]:
    """Hot-add a DIMM while kdump-tools' rule is live (phases 1 and 3): one
    kdump-config try-reload per memory block, whatever its kexec calls did.
    Returns the DIMM, the witness's records and kdump-config's loads that succeeded."""
    mark = witness.mark()
    with timed(figures, f"{phase} s"):
        dimm = g.hotplug_dimm(DIMM)
        calls = witness.wait(mark, lambda c: len(c.kdump_config_runs()) >= blocks, quiet_s=8.0, timeout=300,
                             what=f"{phase}: a kdump-config try-reload per block")
    assert len(calls.kdump_config_runs()) == blocks, calls.describe()
    ok = [x for x in calls.loads() if x["pcomm"] == "kdump-config" and x["ret"] == 0]
    figures[phase] = {"kdump-config runs": len(calls.kdump_config_runs()), "kexec execs": len(calls.execs()),
                      "loads reaching the kernel": len(calls.loads()), "ok": len(ok), "unloads": len(calls.unloads())}
    return dimm, calls, ok


def trixie_root() -> Path:
    """tools/vm/build-trixie-root's root (built once, ~2 min; a no-op when current)."""
    proc = subprocess.run([str(REPO / "tools" / "vm" / "build-trixie-root"), str(TRIXIE_ROOT)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"tools/vm/build-trixie-root failed:\n{proc.stderr[-3000:]}"
    return TRIXIE_ROOT


def start_life(g: Guest, life: int, figures: dict[str, Any]) -> Witness:
    """What a boot of this guest needs before a phase: tracefs and debugfs
    (what systemd mounts on demand on a real host; the test's minimal boot
    target does not pull them in, and BCC reads the tracepoint formats
    there), a witness for this boot, then kdump-tools started as
    multi-user.target would (enabled in life 1; that it stays enabled across
    the panics is checked), so that the witness sees its load."""
    g.run("systemctl start sys-kernel-tracing.mount sys-kernel-debug.mount; test -d /sys/kernel/tracing/events/syscalls")
    with timed(figures, f"life {life} witness start s"):
        witness = Witness(g, f"life{life}")
    with timed(figures, f"life {life} kdump-tools start s"):
        rc, out = run_watched(g, "systemctl restart kdump-tools", timeout=300, what=f"life {life}: systemctl restart kdump-tools")
    res = g.run("systemctl is-active kdump-tools; systemctl is-enabled kdump-tools; cat /sys/kernel/kexec_crash_loaded", check=False)
    assert res.text.split()[-3:] == ["active", "enabled", "1"], (
        out + res.text + g.run("journalctl -b -u kdump-tools --no-pager | tail -30", check=False).text)
    figures[f"life {life} boot s"] = round(g.boot_seconds, 1)
    return witness


def crash_hotplug(g: Guest) -> str:
    """/sys/devices/system/memory/crash_hotplug: 1 when the loaded image lets
    the kernel rewrite the header (trixie's kdump-config loads with
    kexec_file_load, `kexec -s -p`, on a CONFIG_CRASH_HOTPLUG kernel); 6.1
    has no such file."""
    return g.run("cat /sys/devices/system/memory/crash_hotplug 2>/dev/null || echo absent").text.strip()


def check_capture(cap: Capture, witness: Witness, kernel_owns: bool, expected: list[tuple[Dimm, bool]], what: str) -> None:
    """The panic's vmcore covers each DIMM of `expected` exactly when its flag
    says so; unless the kernel rewrites the header itself, its PT_LOADs are
    exactly those of the last load the witness saw succeed this boot (which
    is what makes the witness's headers evidence)."""
    if not kernel_owns:
        last = witness.last_ok_header()
        assert last is not None, f"{what}: no crash load succeeded this boot\n" + witness.since(0).describe()
        assert cap.vmcore.ranges() == last, (what, cap.vmcore.ranges(), last)
    for d, covered in expected:
        assert cap.vmcore.covers(d.addr, d.end) == covered, (what, d, covered, cap.vmcore.describe())


@pytest.mark.kernels("6.1", "trixie")
def test_deb_takes_over_from_real_kdump_tools(vm_assets: VmAssets, tmp_path: Path) -> None:
    """On the host's bookworm root (6.1; kdump-tools installed in the guest
    with dpkg -i) and on a trixie root (trixie's 6.12; kdump-tools 1.10.7
    installed in the root by debootstrap)."""
    t0 = time.monotonic()
    trixie = vm_assets.name == "trixie"
    deb = build_deb(tmp_path / "deb")
    debs = [] if trixie else fetch_debs(tmp_path / "debs")
    root = trixie_root() if trixie else Path("/")
    if trixie:
        modules = [root / "usr/lib/modules" / vm_assets.kernel_release, root / "lib/modules" / vm_assets.kernel_release]
        assert any(m.is_dir() for m in modules), (
            f"the trixie root's kernel is not the guest's {vm_assets.kernel_release} (BCC needs its headers): "
            "rebuild one of them (tools/vm/build-trixie-root --force, tools/vm-assets --kernel trixie --force)"
        )
    # The guest's disk: the overlay's writable layer, so that what the guest
    # installs survives its panics (sparse; ext4 replays its journal after each).
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "4G", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    t_host = time.monotonic() - t0
    assets = dataclasses.replace(vm_assets, guest_initrd=systemd_initrd(vm_assets, tmp_path / "systemd.cpio.gz", persistent=True))
    config = GuestConfig(
        append=f"{APPEND} kdc.rw=/dev/vda", hard_timeout=3000, boot_timeout=180, root_dir=str(root), reboot=True,
        extra_args=("-drive", f"file={disk},if=virtio,format=raw,cache=unsafe"),
    )
    figures: dict[str, Any] = {"root": "trixie" if trixie else "bookworm (host)", "host prep s": round(t_host, 1)}
    with Guest(assets, config, name="deb-takeover") as g:
        assert g.run("readlink /proc/1/exe").text.strip().endswith("/systemd")
        assert b"@@KDC-RW /dev/vda@@" in g.console(), g.console_tail()
        figures["versions"] = g.run("dpkg-query -W -f '${Package}=${Version} ' kdump-tools kexec-tools systemd; uname -r").text.strip()
        (g.xfer / "debs").mkdir()
        for d in [*debs, deb]:
            (g.xfer / "debs" / d.name).write_bytes(d.read_bytes())
        # The capture kernel kdump-tools loads: the VM tier's, through the
        # exchange directory (the trixie root does not hold the host's cache).
        for f in (assets.kernel, assets.capture_initrd):
            (g.xfer / f.name).write_bytes(f.read_bytes())
        capture_kernel, capture_initrd = f"{GUEST_XFER}/{assets.kernel.name}", f"{GUEST_XFER}/{assets.capture_initrd.name}"
        gdeb = f"{GUEST_XFER}/debs/{deb.name}"
        apt_env = "DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none"

        # The guest's root is the host's: a daemon run on the host (bench,
        # a checkout's run) leaves its default state directory there.  A
        # machine the package never touched has none, and purge removes it,
        # so the "before" of the purge check starts without it.
        g.run("rm -rf /var/lib/kdump-coalesce /var/log/kdump-coalesce /run/kdump-coalesce")
        # man-db's dpkg trigger (kdump-tools and the package ship man pages)
        # rebuilds the whole man index over the 9p root: in CI, on a loaded
        # machine, it ran past dpkg -i's 400 s, and with the overlay's copy-up
        # onto the disk here too.  Without this flag the trigger does nothing
        # (man-db's postinst), as in Debian's container images.  dpkg's
        # fsyncs: on the disk under TCG each costs a journal commit, and a
        # test that syncs before each panic does not need them.
        g.run("rm -f /var/lib/man-db/auto-update; echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/kdc-unsafe-io")

        # -- kdump-tools, the real package, enabled and loading the capture kernel itself
        if debs:
            kt = " ".join(f"{GUEST_XFER}/debs/{d.name}" for d in debs)
            with timed(figures, "dpkg -i kdump-tools s"):
                rc, out = run_watched(g, f"{apt_env} dpkg -i {kt}", timeout=400, what="dpkg -i kdump-tools")
            assert rc == 0, out[-3000:]

        # The host root is a docker image whose /usr/sbin/policy-rc.d forbids
        # maintainer scripts to start services (exit 101); the guest is a
        # real machine (like systemd-init dropping /.dockerenv), so its
        # overlay drops it and deb-systemd-invoke starts units as on a host:
        # kdump-coalesce's postinst below starts its unit.  kdump-tools was
        # installed with it still there: its postinst would start the unit
        # before /etc/default/kdump-tools names a capture kernel (start_life
        # restarts it, configured).
        g.run("rm -f /usr/sbin/policy-rc.d")
        # kdc.capture_then=reboot: the capture kernel reboots after its dump,
        # as a real host does, and the next phase runs in the next boot.
        defaults = (
            f"KDUMP_KERNEL={capture_kernel}\nKDUMP_INITRD={capture_initrd}\n"
            f'KDUMP_CMDLINE="{CAPTURE_APPEND} kdc.capture_then=reboot"\n'
        )
        g.run(f"printf '%s' {shlex.quote(defaults)} >> /etc/default/kdump-tools && grep -q '^USE_KDUMP=1' /etc/default/kdump-tools")
        g.run("systemctl enable kdump-tools")
        assert g.run(f"grep -c 'kdump-config try-reload' /lib/udev/rules.d/{RULE}").text.strip() == "5"
        block = block_size(g)
        blocks = DIMM // block
        figures["blocks per DIMM"] = blocks

        # -- life 1, phase 1: kdump-tools alone reloads once per block
        witness = start_life(g, 1, figures)
        dimm1, p1, ok1 = hot_add_under_kdump_tools(g, witness, blocks, figures, "phase 1")
        assert all(r["pcomm"] == "kdump-config" for r in p1.execs()), p1.describe()
        # Whether kdump-tools' reloads take effect on this systemd is recorded,
        # not assumed: the captures check what was really loaded.  (On
        # bookworm they do not: udevd's SystemCallFilter makes the rule's
        # `kexec -p -u` and `kexec -p` fail with EPERM, so the boot's header
        # stays; see docs/operations.md.)
        kdump_tools_effective = bool(ok1)
        if ok1:
            assert covers(header_ranges(ok1[-1]["elfcorehdr"]), dimm1)
        journal1 = g.run("journalctl -b --no-pager -o cat -t kdump-tools | tail -5; journalctl -b -u systemd-udevd --no-pager -o cat | grep -i kdump | tail -5", check=False).text
        figures["phase 1 kdump-tools log"] = journal1.strip().splitlines()[-4:]
        owns1 = crash_hotplug(g) == "1"
        figures["life 1 crash_hotplug"] = owns1
        g.run("sync")
        cap1 = g.crash_and_capture(reboot=True)
        # kdump-tools' own phase: its capture covers DIMM 1 only where its
        # reloads work or the kernel rewrote the header; on bookworm it is the
        # boot's header, which the DIMM is missing from.
        check_capture(cap1, witness, owns1, [(dimm1, kdump_tools_effective or owns1)], "life 1's capture")
        figures["life 1 capture covers DIMM 1"] = cap1.vmcore.covers(dimm1.addr, dimm1.end)
        figures["life 1 capture s"] = round(cap1.seconds, 1)
        print(f"deb take-over so far: {json.dumps(figures)}", flush=True)

        # -- life 2, phase 2: the package takes over
        witness = start_life(g, 2, figures)
        g.wait_memory_online(dimm1.addr, dimm1.end)  # still plugged; online from the boot
        with timed(figures, "snapshot s"):
            before = snapshot(g)
        crash_hotplug_before = crash_hotplug(g)
        figures["crash_hotplug before install"] = crash_hotplug_before
        mark_install = witness.mark()
        with timed(figures, "apt install s"):
            rc, out = run_watched(g, f"{apt_env} apt-get install -y {gdeb}",
                                  timeout=600, what="apt-get install kdump-coalesce")
        journal = g.run("journalctl -b -u kdump-coalesce --no-pager -o cat | tail -40", check=False).text
        assert rc == 0, out[-3000:] + journal
        assert g.run("systemctl is-active kdump-coalesce; systemctl is-enabled kdump-coalesce", check=False).text.split() == ["active", "enabled"], journal
        main_pid = int(g.run("systemctl show -p MainPID --value kdump-coalesce").text.strip())
        mask = g.run(f"cat {RUN_MASK}", check=False)
        assert mask.rc == 0 and mask.text.startswith("# kdump-coalesce: masked"), mask.text + journal
        assert not g.run(f"test -e /etc/udev/rules.d/{RULE}", check=False).ok, "the package must not write /etc/udev/rules.d"
        status = g.run("kdump-coalesce status 2>&1", check=False, timeout=120).text
        # On a kernel with crash hotplug (trixie's 6.12), `auto` hands the
        # header to the kernel: at its start the daemon replaced kdump-tools'
        # plain `kexec -p` image with ONE kexec_load carrying
        # KEXEC_UPDATE_ELFCOREHDR, after which the kernel rewrites the header
        # on every hot-add and nobody reloads.  On 6.1 the daemon manages it.
        kernel_owns = crash_hotplug(g) == "1"
        by_daemon_at_start = [x for x in witness.since(mark_install).loads() if main_pid in (x["pid"], x["ppid"])]
        if not kernel_owns:
            figures["phase 2 path"] = "the daemon reloads"
        elif crash_hotplug_before == "1":
            # stand aside: the image kdump-tools loaded has the kernel's support
            figures["phase 2 path"] = "stand aside (kdump-tools' kexec_file_load image), the kernel updates the header"
            assert by_daemon_at_start == [], "standing aside, the daemon must not load\n" + witness.since(mark_install).describe()
        else:
            figures["phase 2 path"] = "hand-over, then the kernel updates the header"
            assert len(by_daemon_at_start) == 1 and by_daemon_at_start[0]["ret"] == 0, witness.since(mark_install).describe()
            handover = by_daemon_at_start[0]
            assert handover["call"] == "kexec_load" and handover["flags"] & 0x4, handover  # KEXEC_UPDATE_ELFCOREHDR
            assert covers(header_ranges(handover["elfcorehdr"]), dimm1)
        mark = witness.mark()
        t = time.monotonic()
        dimm2 = g.hotplug_dimm(DIMM)
        if kernel_owns:
            p2 = witness.wait(mark, lambda c: True, quiet_s=30.0, timeout=300, what="phase 2: the hot-add's uevents handled")
            assert p2.kdump_config_runs() == [] and p2.loads() == [] and p2.unloads() == [], (
                "after the hand-over nobody may reload (the kernel updates the header)\n" + p2.describe())
            by_daemon = []
        else:
            p2 = witness.wait(mark, lambda c: any(covers(header_ranges(x["elfcorehdr"]), dimm2) for x in c.loads() if x.get("elfcorehdr")),
                              quiet_s=15.0, timeout=300, what="phase 2: a reload by kdump-coalesce covering the new DIMM")
            loads2 = p2.loads()
            by_daemon = [x for x in loads2 if main_pid in (x["pid"], x["ppid"])]
            assert p2.kdump_config_runs() == [], "kdump-tools still reloads: the take-over did not work\n" + p2.describe()
            assert len(by_daemon) == 1 and len(loads2) == 1, p2.describe()
            assert by_daemon[0]["ret"] == 0
            ranges2 = header_ranges(by_daemon[0]["elfcorehdr"])
            assert covers(ranges2, dimm1) and covers(ranges2, dimm2), ranges2
        figures["phase 2 s"] = round(time.monotonic() - t, 1)
        figures["phase 2"] = {"kdump-coalesce loads": len(by_daemon), "kdump-config runs": 0,
                              "by": by_daemon[0]["comm"] if by_daemon else "the kernel", "kexec execs": len(p2.execs())}
        g.run("sync")
        cap2 = g.crash_and_capture(reboot=True)
        check_capture(cap2, witness, kernel_owns, [(dimm1, True), (dimm2, True)], "life 2's capture (kdump-coalesce)")
        figures["life 2 capture s"] = round(cap2.seconds, 1)
        print(f"deb take-over so far: {json.dumps(figures)}", flush=True)

        # -- life 3, phase 3: the package still on after the panic, then purge
        # gives the rule back and the tree is as before
        witness = start_life(g, 3, figures)
        assert g.run("systemctl is-enabled kdump-coalesce", check=False).text.strip() == "enabled"
        with timed(figures, "life 3 daemon start s"):
            rc, out = run_watched(g, "systemctl start kdump-coalesce", timeout=400, what="life 3: systemctl start kdump-coalesce")
        mask = g.run(f"cat {RUN_MASK}", check=False)
        assert rc == 0 and mask.rc == 0, out + mask.text + g.run("journalctl -b -u kdump-coalesce --no-pager -o cat | tail -40", check=False).text
        with timed(figures, "apt purge s"):
            rc, out = run_watched(g, f"{apt_env} apt-get purge -y kdump-coalesce", timeout=300, what="apt-get purge kdump-coalesce")
        assert rc == 0, out[-3000:]
        assert not g.run(f"test -e {RUN_MASK}", check=False).ok, "purge left the udev mask"
        assert g.run("systemctl show kdump-coalesce -p LoadState --value").text.strip() == "not-found"
        after = snapshot(g)
        assert after == before, "purge did not give the tree back:\n" + "\n".join(sorted(set(before.splitlines()) ^ set(after.splitlines())))
        dimm3, p3, ok3 = hot_add_under_kdump_tools(g, witness, blocks, figures, "phase 3")
        assert bool(ok3) == kdump_tools_effective, p3.describe()
        owns3 = crash_hotplug(g) == "1"
        # trixie: purge stopped the daemon; the image loaded this boot keeps
        # the kernel's hotplug support, so the kernel put DIMM 3 in the header.
        assert owns3 == kernel_owns, (owns3, kernel_owns)
        g.run("sync")
        cap3 = g.crash_and_capture()
        check_capture(cap3, witness, owns3, [(dimm1, True), (dimm2, True), (dimm3, kdump_tools_effective or owns3)],
                      "life 3's capture (kdump-tools again)")
        figures["vmcore covers DIMM 1, 2, 3"] = [cap3.vmcore.covers(d.addr, d.end) for d in (dimm1, dimm2, dimm3)]
        figures["life 3 capture s"] = round(cap3.seconds, 1)
    figures["total s"] = round(time.monotonic() - t0, 1)
    print(f"deb take-over ({figures['root']}): {json.dumps(figures)}; status before phase 2 hot-add: {status.strip()[:300]!r}")
