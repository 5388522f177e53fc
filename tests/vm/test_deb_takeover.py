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
segment copied from the caller's memory.  Then, in one guest:

1. kdump-tools alone: a 1 GiB DIMM (8 blocks) makes kdump-config reload once
   per block (an unload and a load each), the last header covers the DIMM;
2. `apt-get install ./kdump-coalesce_*.deb` (built from this tree by
   tools/build-deb, lintian errors fail the build): the service is active,
   kdump-tools' rule is masked in /run/udev/rules.d; the next DIMM makes ONE
   load, by the daemon, none by kdump-config, and its header covers both DIMMs;
3. `apt-get purge kdump-coalesce`: the rule is back and the files the
   package touched are as before install; the next DIMM makes kdump-config
   reload once per block again.

The same on a Debian trixie root (tools/vm/build-trixie-root: kdump-tools
1.10.7, kexec-tools 2.0.29, systemd 257, in the root since debootstrap) under
trixie's own kernel: `[trixie]` (the root is built by the test when missing,
~2 min; tools/vm-assets fetches the kernel).

A guest survives one panic only (the capture kernel powers it off), so the
panic comes after phase 3: the capture kernel's /proc/vmcore covers the three
DIMMs, and its PT_LOADs are exactly those of the last header the witness
recorded, which is what makes the witness's per-phase headers evidence.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import CAPTURE_APPEND, GIB, GUEST_XFER, TRIXIE_ROOT, Dimm, Guest, GuestConfig, VmAssets
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
    def __init__(self, g: Guest) -> None:
        self.g = g
        self.path = g.xfer / "kexec.jsonl"
        # Through the exchange directory: a guest on another root (trixie) has no checkout.
        (g.xfer / "kexec-log.py").write_bytes((REPO / "tools" / "vm" / "kexec-log.py").read_bytes())
        script = f"{GUEST_XFER}/kexec-log.py"
        g.run(f"setsid /usr/bin/python3 {script} {GUEST_XFER}/kexec.jsonl </dev/null >{GUEST_XFER}/kexec-log.out 2>&1 &")
        deadline = time.monotonic() + 120
        while not (g.xfer / "kexec.jsonl.ready").exists():
            if time.monotonic() > deadline:
                pytest.fail("kexec witness not ready:\n" + (g.xfer / "kexec-log.out").read_text(errors="replace")[-3000:])
            time.sleep(0.2)

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
    t = time.monotonic()
    dimm = g.hotplug_dimm(DIMM)
    calls = witness.wait(mark, lambda c: len(c.kdump_config_runs()) >= blocks, quiet_s=8.0, timeout=300,
                         what=f"{phase}: a kdump-config try-reload per block")
    figures[f"{phase} s"] = round(time.monotonic() - t, 1)
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
    t_host = time.monotonic() - t0
    assets = dataclasses.replace(vm_assets, guest_initrd=systemd_initrd(vm_assets, tmp_path / "systemd.cpio.gz"))
    config = GuestConfig(append=APPEND, hard_timeout=2400, boot_timeout=120, root_dir=str(root))
    figures: dict[str, Any] = {"root": "trixie" if trixie else "bookworm (host)", "host prep s": round(t_host, 1)}
    with Guest(assets, config, name="deb-takeover") as g:
        figures["boot s"] = round(g.boot_seconds, 1)
        assert g.run("readlink /proc/1/exe").text.strip().endswith("/systemd")
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
        # machine, it ran past dpkg -i's 400 s.  Without this flag the trigger
        # does nothing (man-db's postinst), as in Debian's container images.
        # dpkg's fsyncs buy nothing on a throw-away overlay either.
        g.run("rm -f /var/lib/man-db/auto-update; echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/kdc-unsafe-io")

        # -- kdump-tools, the real package, enabled and loading the capture kernel itself
        if debs:
            kt = " ".join(f"{GUEST_XFER}/debs/{d.name}" for d in debs)
            rc, out = run_watched(g, f"{apt_env} dpkg -i {kt}", timeout=400, what="dpkg -i kdump-tools")
            assert rc == 0, out[-3000:]

        # The host root is a docker image whose /usr/sbin/policy-rc.d forbids
        # maintainer scripts to start services (exit 101); the guest is a
        # real machine (like systemd-init dropping /.dockerenv), so its
        # overlay drops it and deb-systemd-invoke starts units as on a host:
        # kdump-coalesce's postinst below starts its unit.  kdump-tools was
        # installed with it still there: its postinst would start the unit
        # before /etc/default/kdump-tools names a capture kernel (the test
        # restarts it below, configured).
        g.run("rm -f /usr/sbin/policy-rc.d")
        defaults = (
            f"KDUMP_KERNEL={capture_kernel}\nKDUMP_INITRD={capture_initrd}\n"
            f'KDUMP_CMDLINE="{CAPTURE_APPEND}"\n'
        )
        g.run(f"printf '%s' {shlex.quote(defaults)} >> /etc/default/kdump-tools && grep -q '^USE_KDUMP=1' /etc/default/kdump-tools")
        rc, out = run_watched(g, "systemctl enable kdump-tools; systemctl restart kdump-tools", timeout=300, what="systemctl restart kdump-tools")
        res = g.run("systemctl is-active kdump-tools; systemctl is-enabled kdump-tools; cat /sys/kernel/kexec_crash_loaded", check=False)
        assert res.text.split()[-3:] == ["active", "enabled", "1"], out + res.text + g.run("journalctl -b -u kdump-tools --no-pager | tail -30", check=False).text
        assert g.run(f"grep -c 'kdump-config try-reload' /lib/udev/rules.d/{RULE}").text.strip() == "5"
        block = block_size(g)
        blocks = DIMM // block
        # tracefs/debugfs: what systemd mounts on demand on a real host (its
        # own mount units; the test's minimal boot target does not pull them
        # in).  BCC reads the tracepoint formats there: the witness and the
        # daemon's BPF source.
        g.run("systemctl start sys-kernel-tracing.mount sys-kernel-debug.mount; test -d /sys/kernel/tracing/events/syscalls")
        witness = Witness(g)
        figures["blocks per DIMM"] = blocks

        # -- phase 1: kdump-tools alone reloads once per block
        dimm1, p1, ok1 = hot_add_under_kdump_tools(g, witness, blocks, figures, "phase 1")
        assert all(r["pcomm"] == "kdump-config" for r in p1.execs()), p1.describe()
        # Whether kdump-tools' reloads take effect on this systemd is recorded,
        # not assumed: the final capture checks what was really loaded.
        kdump_tools_effective = bool(ok1)
        if ok1:
            assert covers(header_ranges(ok1[-1]["elfcorehdr"]), dimm1)
        journal1 = g.run("journalctl -b --no-pager -o cat -t kdump-tools | tail -5; journalctl -b -u systemd-udevd --no-pager -o cat | grep -i kdump | tail -5", check=False).text
        figures["phase 1 kdump-tools log"] = journal1.strip().splitlines()[-4:]
        print(f"deb take-over so far: {json.dumps(figures)}", flush=True)

        # -- phase 2: the package takes over
        before = g.run(SNAPSHOT).text
        hotplug_file = "cat /sys/devices/system/memory/crash_hotplug 2>/dev/null || echo absent"
        # trixie's kdump-config loads with kexec_file_load (`kexec -s -p`):
        # on a CONFIG_CRASH_HOTPLUG kernel that image already lets the kernel
        # rewrite the header (1); bookworm's 6.1 has no such file.
        crash_hotplug_before = g.run(hotplug_file).text.strip()
        figures["crash_hotplug before install"] = crash_hotplug_before
        mark_install = witness.mark()
        t = time.monotonic()
        rc, out = run_watched(g, f"{apt_env} apt-get install -y {gdeb}",
                              timeout=600, what="apt-get install kdump-coalesce")
        figures["apt install s"] = round(time.monotonic() - t, 1)
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
        kernel_owns = g.run(hotplug_file).text.strip() == "1"
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
        print(f"deb take-over so far: {json.dumps(figures)}", flush=True)

        # -- phase 3: purge gives the rule back and the tree is as before
        t = time.monotonic()
        rc, out = run_watched(g, f"{apt_env} apt-get purge -y kdump-coalesce", timeout=300, what="apt-get purge kdump-coalesce")
        figures["apt purge s"] = round(time.monotonic() - t, 1)
        assert rc == 0, out[-3000:]
        assert not g.run(f"test -e {RUN_MASK}", check=False).ok, "purge left the udev mask"
        assert g.run("systemctl show kdump-coalesce -p LoadState --value").text.strip() == "not-found"
        after = g.run(SNAPSHOT).text
        assert after == before, "purge did not give the tree back:\n" + "\n".join(sorted(set(before.splitlines()) ^ set(after.splitlines())))
        dimm3, p3, ok3 = hot_add_under_kdump_tools(g, witness, blocks, figures, "phase 3")
        assert bool(ok3) == kdump_tools_effective, p3.describe()
        print(f"deb take-over so far: {json.dumps(figures)}", flush=True)
        if kernel_owns:
            # Purge stopped the daemon; the image it loaded keeps the
            # kernel's hotplug support, so the kernel put DIMM 3 in the header too.
            assert g.read_text("/sys/devices/system/memory/crash_hotplug").strip() == "1"
            cap = g.crash_and_capture()
            for dimm in (dimm1, dimm2, dimm3):
                assert cap.vmcore.covers(dimm.addr, dimm.end), (dimm, cap.vmcore.describe())
        else:
            # What the crash kernel holds now: the header of the last load that succeeded, by anyone.
            last_ok = [x for x in witness.since(0).loads() if x["ret"] == 0 and x.get("elfcorehdr")][-1]
            last = header_ranges(last_ok["elfcorehdr"])
            assert covers(last, dimm1) and covers(last, dimm2), last
            assert covers(last, dimm3) == kdump_tools_effective, (last, dimm3)

            # -- the panic: the capture kernel dumps what the last header says
            cap = g.crash_and_capture()
            assert cap.vmcore.ranges() == last, (cap.vmcore.ranges(), last)
            assert cap.vmcore.covers(dimm1.addr, dimm1.end) and cap.vmcore.covers(dimm2.addr, dimm2.end), cap.vmcore.describe()
        figures["vmcore covers DIMM 1, 2, 3"] = [cap.vmcore.covers(d.addr, d.end) for d in (dimm1, dimm2, dimm3)]
        figures["capture s"] = round(cap.seconds, 1)
    figures["total s"] = round(time.monotonic() - t0, 1)
    print(f"deb take-over ({figures['root']}): {json.dumps(figures)}; status before phase 2 hot-add: {status.strip()[:300]!r}")
