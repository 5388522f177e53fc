"""install-service / uninstall-service against a real systemd (PID 1) and udevd.

This host runs no systemd, so the guest does: it boots Debian's kernel with
``rdinit=/kdc/systemd-init`` (tools/vm/systemd-init, appended to the guest
initramfs as a second cpio archive together with the guest kernel's
overlay.ko), which lays a tmpfs over the host root (virtio-9p, read-only)
with overlayfs and switch_roots into the host's own /lib/systemd/systemd.  The
boot target is a minimal one (journald, udevd and the harness's command
server as a unit); everything after that is the real thing: the project's
unit with all its hardening, Type=notify readiness through $NOTIFY_SOCKET,
systemctl daemon-reload / restart / stop, udevadm control --reload.

The distro rule is a stand-in for Debian's 50-kdump-tools.rules (kdump-tools
is not installed here) that, instead of reloading kdump, touches a marker on a
``change`` uevent of cpu0: firing it with ``udevadm trigger`` before, during
and after the install shows that udevd itself stopped and resumed applying the
rule, not merely that a file was written.
"""

from __future__ import annotations

import dataclasses
import gzip
import lzma
import io
import shlex
import time
from pathlib import Path

import pytest

from testbed.harness import GUEST_APPEND, VENV, Guest, GuestConfig, VmAssets

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "tools" / "vm" / "systemd-init"

APPEND = (
    f"{GUEST_APPEND} rdinit=/kdc/systemd-init systemd.unit=kdc-systemd.target"
    " systemd.show_status=0 systemd.firstboot=0 loglevel=4"
    # Walks (and, with --remove, would clean) the host's /tmp and /var/tmp
    # over 9p: ~35 s under TCG, and nothing here needs it.
    " systemd.mask=systemd-tmpfiles-setup.service systemd.mask=systemd-tmpfiles-clean.timer"
)

RULE = "/lib/udev/rules.d/50-kdump-tools.rules"
MASK = "/etc/udev/rules.d/50-kdump-tools.rules"
MARKER = "/run/kdc-distro-rule-fired"
# The stand-in distro rule: observable, harmless, and only udevd runs it.
RULE_TEXT = f'SUBSYSTEM=="cpu", KERNEL=="cpu0", ACTION=="change", RUN+="/bin/touch {MARKER}"\n'
CONFIG = """\
# The VM test: netlink uevents (no BCC compile under TCG), no kexec.
[daemon]
source = "uevent"
[updater]
backend = "dry-run"
"""
KDC = f"{VENV}/bin/kdump-coalesce"
# The unit runs with PrivateTmp=yes, so a checkout under /tmp or /var/tmp (a
# CI clone) is invisible to the service, and install-service refuses its
# kdump-coalesce.  Then the guest binds the checkout at a neutral path and
# the unit runs the same code through Debian's python3: PYTHONPATH names the
# checkout (the packages) and its venv's site-packages (the dependencies).
HIDDEN_BY_PRIVATE_TMP = str(REPO).startswith(("/tmp/", "/var/tmp/"))
UNIT_CHECKOUT = "/opt/kdc-checkout"
if HIDDEN_BY_PRIVATE_TMP:
    _site = next(REPO.glob(".venv/lib/python3*/site-packages")).relative_to(REPO)
    EXEC: str | None = (
        f"/usr/bin/env PYTHONPATH={UNIT_CHECKOUT}:{UNIT_CHECKOUT}/{_site} /usr/bin/python3 -m kdump_coalesce"
    )
    DAEMON_CMDLINE = "/usr/bin/python3 -m kdump_coalesce run"
else:
    EXEC = None
    DAEMON_CMDLINE = f"{KDC} run"
# What install-service may touch and uninstall-service must give back.
SNAPSHOT = (
    # Files and links with mode, owner, size, mtime and content; directories
    # without mtime (creating and deleting an entry moves it).
    "D='/etc/systemd /etc/udev /lib/udev/rules.d /etc/kdump-coalesce';"
    " find $D -type d -printf '%p dir %m %U:%G\\n' -o -printf '%p %y %m %U:%G %s %T@ %l\\n' | sort;"
    " find $D -type f -exec sha256sum {} + | sort"
)


def _newc(files: list[tuple[str, bytes, int]]) -> bytes:
    """A newc cpio archive of regular files (directories exist in the first archive)."""
    out = io.BytesIO()

    def entry(name: str, data: bytes, mode: int, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-out.tell() % 4) + data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, data, mode) in enumerate(files, start=1):
        entry(name, data, mode, ino)
    entry("TRAILER!!!", b"", 0, 0)
    data = out.getvalue()
    return data + b"\0" * (-len(data) % 512)


# What mounting an ext4 disk (systemd-init's kdc.rw=DEV) needs beyond the
# guest initramfs' modules, in load order; all =m in Debian's 6.1 and 6.12
# (ext4 finds "crc32c" through the crypto API, so crc32c_generic goes first).
DISK_MODULES = ("crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", "virtio_blk")


def systemd_initrd(assets: VmAssets, dest: Path, *, persistent: bool = False) -> Path:
    """The guest initramfs plus a second archive: the systemd rdinit and overlay.ko;
    with persistent, also what systemd-init needs to mount a kdc.rw= ext4 disk."""
    lib = assets.directory / "lib-modules"
    # 6.12 ships its modules xz-compressed (overlay.ko.xz); busybox's insmod takes the plain ELF.
    found = {p.name.removesuffix(".xz").removesuffix(".ko"): p for p in lib.rglob("*.ko*")}

    def module(name: str, why: str) -> bytes:
        if name not in found:
            pytest.fail(f"no {name}.ko(.xz) in {lib}: {why}")
        data = found[name].read_bytes()
        return lzma.decompress(data) if found[name].suffix == ".xz" else data

    files = [
        ("kdc/systemd-init", INIT.read_bytes(), 0o100755),
        ("kdc/modules/overlay.ko", module("overlay", "the guest cannot lay a tmpfs over the 9p root"), 0o100644),
    ]
    if persistent:
        why = "the guest cannot mount its ext4 disk (kdc.rw=)"
        files += [(f"kdc/modules/{m}.ko", module(m, why), 0o100644) for m in DISK_MODULES]
        files.append(("kdc/extra.load", "".join(f"{m}.ko\n" for m in DISK_MODULES).encode(), 0o100644))
    extra = _newc(files)
    dest.write_bytes(assets.guest_initrd.read_bytes() + gzip.compress(extra, mtime=0))
    return dest


def _active(g: Guest, unit: str) -> str:
    return g.run(f"systemctl is-active {unit}", check=False).text.strip()


def _rule_fires(g: Guest) -> bool:
    """Send cpu0 a change uevent through udevd and say whether the distro rule ran."""
    res = g.run(
        f"rm -f {MARKER}; udevadm trigger --action=change /sys/devices/system/cpu/cpu0"
        f" && udevadm settle --timeout=30 && if [ -e {MARKER} ]; then echo fired; else echo quiet; fi",
        timeout=60,
    )
    assert res.text.strip().splitlines()[-1] in ("fired", "quiet"), res.text
    return res.text.strip().endswith("fired")


def test_install_service_under_real_systemd(vm_assets: VmAssets, tmp_path: Path) -> None:
    assets = dataclasses.replace(vm_assets, guest_initrd=systemd_initrd(vm_assets, tmp_path / "systemd.cpio.gz"))
    config = GuestConfig(append=APPEND, hard_timeout=240, boot_timeout=120)
    t0 = time.monotonic()
    with Guest(assets, config, name="service-systemd") as g:
        booted = time.monotonic() - t0
        # PID 1 is the host's systemd, with udevd listening on its control socket.
        assert g.run("readlink /proc/1/exe").text.strip().endswith("/systemd")
        assert g.run("test -d /run/systemd/system && test -S /run/udev/control && echo ok").text.strip() == "ok"
        assert _active(g, "systemd-udevd") == "active"
        assert g.run("uname -r").text.strip() == assets.kernel_release

        # The stand-in distro rule, active: udevd runs it.
        g.run(
            f"printf '%s' {shlex.quote(RULE_TEXT)} > {RULE} && mkdir -p /etc/kdump-coalesce"
            f" && printf '%s' {shlex.quote(CONFIG)} > /etc/kdump-coalesce/config.toml && udevadm control --reload"
        )
        assert _rule_fires(g), "the stand-in distro rule does not fire before install-service"
        before = g.run(SNAPSHOT).text

        install_cmd = f"{KDC} install-service"
        if EXEC is not None:
            g.run(f"mkdir -p {UNIT_CHECKOUT} && mount --bind {REPO} {UNIT_CHECKOUT}")
            install_cmd += f" --exec {shlex.quote(EXEC)}"
        t_install = time.monotonic()
        inst = g.run(f"{install_cmd} 2>&1", timeout=200, check=False)
        install_s = time.monotonic() - t_install
        journal = g.run("journalctl -b -u kdump-coalesce --no-pager -o cat | tail -40", check=False).text
        assert inst.rc == 0, f"install-service failed:\n{inst.text}\njournal:\n{journal}"
        assert "systemd is not running" not in inst.text and "udev is not running" not in inst.text, inst.text

        # Type=notify: `active` is only reached once READY=1 came through $NOTIFY_SOCKET.
        assert _active(g, "kdump-coalesce") == "active", journal
        show = dict(
            line.split("=", 1)
            for line in g.run(
                "systemctl show kdump-coalesce -p Type -p NotifyAccess -p StatusText -p MainPID"
                " -p FragmentPath -p UnitFileState -p ExecMainStatus"
            ).text.splitlines()
            if "=" in line
        )
        assert show["Type"] == "notify", show
        assert show["FragmentPath"] == "/etc/systemd/system/kdump-coalesce.service", show
        assert show["UnitFileState"] == "enabled", show
        assert show["StatusText"].strip(), f"no STATUS= reached systemd: {show}\njournal:\n{journal}"
        main_pid = int(show["MainPID"])
        assert main_pid > 0, show
        cmdline = g.run(f"tr '\\0' ' ' < /proc/{main_pid}/cmdline").text
        assert DAEMON_CMDLINE in cmdline, cmdline
        # The unit's hardening is in force on the running daemon.
        caps = g.run(f"grep CapBnd /proc/{main_pid}/status").text
        assert int(caps.split()[1], 16) != (1 << 41) - 1, caps

        # The rule is masked in /etc/udev/rules.d and udevd reloaded: it no longer fires.
        mask = g.run(f"cat {MASK}").text
        assert "kdump-coalesce" in mask and "RUN+=" not in "".join(
            line for line in mask.splitlines() if not line.lstrip().startswith("#")
        ), mask
        assert not _rule_fires(g), "the distro rule still fires after install-service (mask not in effect)"
        status_after_event = g.run("systemctl show kdump-coalesce -p StatusText --value").text.strip()

        uninst = g.run(f"{KDC} uninstall-service 2>&1", timeout=200, check=False)
        assert uninst.rc == 0, f"uninstall-service failed:\n{uninst.text}"
        assert _active(g, "kdump-coalesce") in ("inactive", "unknown"), g.run("systemctl status kdump-coalesce", check=False).text
        assert g.run(f"test -e {MASK} || echo gone").text.strip() == "gone"
        assert g.run("test -e /etc/systemd/system/kdump-coalesce.service || echo gone").text.strip() == "gone"
        assert g.run("systemctl show kdump-coalesce -p LoadState --value").text.strip() == "not-found"
        assert _rule_fires(g), "the distro rule does not fire again after uninstall-service"
        after = g.run(SNAPSHOT).text
        assert after == before, "uninstall-service did not restore the tree:\n" + "\n".join(
            sorted(set(before.splitlines()) ^ set(after.splitlines()))
        )
        total = time.monotonic() - t0
        print(
            f"systemd guest: boot {booted:.1f}s, install-service (to READY=1) {install_s:.1f}s, total {total:.1f}s;"
            f" StatusText {show['StatusText']!r} then {status_after_event!r}"
        )
