"""install-service / uninstall-service in a temporary root: the distro rule is
masked, and uninstall restores the tree exactly (content, mode, owner,
timestamps, symlink targets, the set of paths)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kdump_coalesce._distro_rules import active_distro_rules, is_our_mask, rule_state
from kdump_coalesce._install import MANIFEST, Host, InstallError, InstallOptions, install, uninstall
from kdump_coalesce.cli import main
from ground.errors import EXIT_BAD_INPUT, EXIT_OK

# /lib/udev/rules.d/50-kdump-tools.rules from Debian bookworm's kdump-tools 1:1.8.1
DEBIAN_RULE = """\
SUBSYSTEM=="memory", ACTION=="online", PROGRAM="/usr/sbin/kdump-config try-reload"
SUBSYSTEM=="memory", ACTION=="offline", PROGRAM="/usr/sbin/kdump-config try-reload"
SUBSYSTEM=="cpu", ACTION=="add", PROGRAM="/usr/sbin/kdump-config try-reload"
SUBSYSTEM=="cpu", ACTION=="remove", PROGRAM="/usr/sbin/kdump-config try-reload"
SUBSYSTEM=="cpu", ACTION=="online", PROGRAM="/usr/sbin/kdump-config try-reload"
"""
# Shape of Fedora's kdump-utils rule (the throttler is what matters here).
FEDORA_RULE = """\
SUBSYSTEM=="cpu", ACTION=="add", GOTO="kdump_reload"
SUBSYSTEM=="memory", ACTION=="online", GOTO="kdump_reload"
GOTO="kdump_reload_end"
LABEL="kdump_reload"
RUN+="/usr/lib/udev/kdump-udev-throttler"
LABEL="kdump_reload_end"
"""


def snapshot(root: Path) -> dict[str, Any]:
    """Everything 'exactly' means, for every path under root."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            entry: dict[str, Any] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                entry["mtime_ns"] = st.st_mtime_ns
                entry["sha256"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            out[os.path.relpath(p, root)] = entry
    return out


def debian_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    rules = root / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "50-kdump-tools.rules").write_text(DEBIAN_RULE)
    (rules / "50-udev-default.rules").write_text('SUBSYSTEM=="mem", MODE="0640"\n')
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    return root


def host(root: Path) -> tuple[Host, list[str]]:
    lines: list[str] = []
    return Host(root=str(root), report=lines.append), lines


OPTIONS = InstallOptions("/opt/kc/bin/kdump-coalesce")


def test_install_masks_the_debian_rule_and_uninstall_restores_exactly(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    before = snapshot(root)
    assert [r.name for r, _ in active_distro_rules(str(root))] == ["50-kdump-tools.rules"]

    h, lines = host(root)
    install(h, OPTIONS)
    state = rule_state(str(root), "50-kdump-tools.rules")
    assert state.effective == "etc/udev/rules.d/50-kdump-tools.rules"
    assert state.shipped == "lib/udev/rules.d/50-kdump-tools.rules"
    assert state.masked_by_us and not state.active
    assert active_distro_rules(str(root)) == []
    assert (root / "lib/udev/rules.d/50-kdump-tools.rules").read_text() == DEBIAN_RULE  # the package's file untouched
    unit = (root / "etc/systemd/system/kdump-coalesce.service").read_text()
    assert "ExecStart=/opt/kc/bin/kdump-coalesce run\n" in unit and "Type=notify" in unit
    link = root / "etc/systemd/system/multi-user.target.wants/kdump-coalesce.service"
    assert os.readlink(link) == "/etc/systemd/system/kdump-coalesce.service"
    assert h.ran == []  # not a live system: nothing run
    assert any("masked /lib/udev/rules.d/50-kdump-tools.rules" in line for line in lines)

    uninstall(h)
    assert snapshot(root) == before


def test_existing_files_are_backed_up_and_restored_byte_for_byte(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    # an admin's own copy of the rule in /etc (still active), odd mode and an old mtime
    admin = root / "etc/udev/rules.d/50-kdump-tools.rules"
    admin.write_text("# local tweak\n" + DEBIAN_RULE)
    os.chmod(admin, 0o600)
    os.utime(admin, ns=(1_000_000_000, 2_000_000_000))
    # a unit of the same name someone left there
    foreign = root / "etc/systemd/system/kdump-coalesce.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    os.utime(foreign, ns=(3_000_000_000, 4_000_000_000))
    # the wants dir exists with a symlink of the same name pointing elsewhere
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    os.symlink("/lib/systemd/system/other.service", wants / "kdump-coalesce.service")
    before = snapshot(root)

    h, _ = host(root)
    install(h, OPTIONS)
    assert is_our_mask(admin.read_bytes())
    assert "Type=notify" in foreign.read_text()
    manifest = json.loads((root / MANIFEST).read_text())
    assert sorted(a["path"] for a in manifest["actions"] if a["op"] == "replace") == [
        "etc/systemd/system/kdump-coalesce.service",
        "etc/systemd/system/multi-user.target.wants/kdump-coalesce.service",
        "etc/udev/rules.d/50-kdump-tools.rules",
    ]
    uninstall(h)
    assert snapshot(root) == before


def test_fedora_and_suse_rules_in_usr_lib(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rules = root / "usr/lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "98-kexec.rules").write_text(FEDORA_RULE)
    (rules / "70-kdump.rules").write_text('SUBSYSTEM=="cpu", RUN+="/usr/lib/kdump/load-once.sh"\n')
    before = snapshot(root)
    h, _ = host(root)
    install(h, OPTIONS)
    assert active_distro_rules(str(root)) == []
    for name in ("98-kexec.rules", "70-kdump.rules"):
        state = rule_state(str(root), name)
        assert state.masked_by_us and state.shipped == f"usr/lib/udev/rules.d/{name}"
    uninstall(h)
    assert snapshot(root) == before  # including the etc/, var/ trees install had to create


def test_a_rule_masked_by_someone_else_is_left_alone(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    os.symlink("/dev/null", root / "etc/udev/rules.d/50-kdump-tools.rules")
    before = snapshot(root)
    h, lines = host(root)
    install(h, OPTIONS)
    assert os.readlink(root / "etc/udev/rules.d/50-kdump-tools.rules") == "/dev/null"
    assert any("left alone" in line for line in lines)
    uninstall(h)
    assert snapshot(root) == before


def test_install_twice_then_uninstall_once(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    before = snapshot(root)
    h, lines = host(root)
    install(h, OPTIONS)
    install(h, InstallOptions("/usr/bin/kdump-coalesce"))
    assert "ExecStart=/usr/bin/kdump-coalesce run\n" in (root / "etc/systemd/system/kdump-coalesce.service").read_text()
    manifest = json.loads((root / MANIFEST).read_text())
    assert not [a for a in manifest["actions"] if a["op"] == "replace"]  # our own files are never "backed up"
    assert any("already masked" in line for line in lines)
    uninstall(h)
    assert snapshot(root) == before


def test_no_mask_and_no_enable(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    h, _ = host(root)
    install(h, InstallOptions("/x/kdump-coalesce", enable=False, mask=False))
    assert rule_state(str(root), "50-kdump-tools.rules").active
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()
    uninstall(h)


def test_extra_rule(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    (root / "lib/udev/rules.d/99-site-kdump.rules").write_text('SUBSYSTEM=="memory", RUN+="/usr/local/sbin/reload"\n')
    h, _ = host(root)
    install(h, InstallOptions("/x/kdump-coalesce", extra_rules=("99-site-kdump.rules",)))
    assert rule_state(str(root), "99-site-kdump.rules").masked_by_us
    assert not rule_state(str(root), "50-udev-default.rules").masked_by_us


def test_tampered_backup_is_refused_and_the_manifest_kept(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    admin = root / "etc/udev/rules.d/50-kdump-tools.rules"
    admin.write_text(DEBIAN_RULE)
    h, _ = host(root)
    install(h, OPTIONS)
    (backup,) = list((root / "var/lib/kdump-coalesce/install/backup").iterdir())
    backup.write_text("something else\n")
    with pytest.raises(InstallError, match="backup does not match"):
        uninstall(h)
    assert (root / MANIFEST).exists()
    assert is_our_mask(admin.read_bytes())  # not replaced with the wrong content


def test_service_outputs_are_removed_but_trace_files_kept(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    h, _ = host(root)
    install(h, OPTIONS)
    # what the running service would have made
    (root / "run/kdump-coalesce").mkdir(parents=True)
    (root / "run/kdump-coalesce/status.json").write_text("{}")
    (root / "var/log/kdump-coalesce").mkdir(parents=True)
    (root / "var/log/kdump-coalesce/trace.jsonl").write_text("{}\n")
    (root / "var/lib/kdump-coalesce/staging").mkdir()
    prom_dir = root / "var/lib/prometheus/node-exporter"
    prom_dir.mkdir(parents=True)
    (prom_dir / "kdump-coalesce.prom").write_text("# HELP kdump_coalesce_ready x\n")
    (prom_dir / "other.prom").write_text("# HELP other x\n")
    uninstall(h, textfile="/var/lib/prometheus/node-exporter/kdump-coalesce.prom")
    assert not (root / "run/kdump-coalesce").exists()
    assert not (root / "var/lib/kdump-coalesce").exists()
    assert not (prom_dir / "kdump-coalesce.prom").exists() and (prom_dir / "other.prom").exists()
    assert (root / "var/log/kdump-coalesce/trace.jsonl").exists()


def test_purge_deletes_trace_files(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    h, _ = host(root)
    install(h, OPTIONS)
    (root / "var/log/kdump-coalesce").mkdir(parents=True)
    (root / "var/log/kdump-coalesce/trace.jsonl").write_text("{}\n")
    uninstall(h, purge=True)
    assert not (root / "var/log/kdump-coalesce").exists()


def test_existing_state_dir_is_kept(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    (root / "var/lib/kdump-coalesce/staging").mkdir(parents=True)
    before = snapshot(root)
    h, _ = host(root)
    install(h, OPTIONS)
    uninstall(h)
    assert snapshot(root) == before


def test_cli_round_trip_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = debian_root(tmp_path)
    before = snapshot(root)
    assert main(["install-service", "--root", str(root), "--exec", "/usr/bin/kdump-coalesce"]) == EXIT_OK
    assert not rule_state(str(root), "50-kdump-tools.rules").active
    assert main(["uninstall-service", "--root", str(root)]) == EXIT_OK
    assert snapshot(root) == before
    capsys.readouterr()
    # nothing installed: one clear line, non-zero
    assert main(["uninstall-service", "--root", str(root)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no install manifest" in err[0] and str(root) in err[0]
    assert main(["install-service", "--root", str(tmp_path / "absent"), "--exec", "/usr/bin/kdump-coalesce"]) != 0
    assert "--root" in capsys.readouterr().err
    assert main(["install-service", "--root", str(root), "--exec", "/usr/bin/kdump-coalesce", "--mask-rule", "../evil"]) != 0
    assert snapshot(root) == before


def test_print_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service", "--print", "--exec", "/usr/bin/kdump-coalesce"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("# kdump-coalesce") and "ExecStart=/usr/bin/kdump-coalesce run\n" in out


@pytest.mark.parametrize("exec_start", ["/tmp/checkout/.venv/bin/kdump-coalesce", "/var/tmp/kc/bin/kdump-coalesce --verbose"])
def test_install_refuses_an_executable_private_tmp_hides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exec_start: str
) -> None:
    # The unit runs with PrivateTmp=yes: systemd could never start it.
    root = tmp_path / "root"
    root.mkdir()
    assert main(["install-service", "--root", str(root), "--exec", exec_start]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "PrivateTmp=yes hides" in err
    assert list(root.iterdir()) == []  # nothing was written
