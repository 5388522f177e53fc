"""Installing the service, and undoing it exactly.

``install-service`` changes a handful of paths; every change is written to a
manifest *before* it is made (a journal: a crash half-way leaves a manifest
that still covers everything done), with a byte-for-byte backup of anything it
replaces.  ``uninstall-service`` undoes the manifest in reverse: created files
and symlinks are removed, replaced ones are restored with their content, mode,
owner and timestamps, directories it created are removed when empty.

What is changed (paths relative to ``--root``, normally /):

- ``etc/systemd/system/kdump-coalesce.service``: the unit, with ``ExecStart``
  pointing at this installation;
- ``etc/systemd/system/multi-user.target.wants/kdump-coalesce.service``: the
  symlink ``systemctl enable`` would make;
- ``etc/udev/rules.d/<distro rule>``: a comments-only mask of each distro
  reload rule found (:mod:`._distro_rules`);
- ``var/lib/kdump-coalesce/install/``: the manifest and the backups.

Order, so that kdump is never left without an updater: install starts the
service (systemd waits for READY=1) *before* it masks the distro rule, and
leaves the rule active when the service does not start; uninstall unmasks the
rule first, then stops the service.  The short overlap can reload twice; a gap
would leave events with nobody reloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from . import __version__
from ._distro_rules import KNOWN_RULES, OVERRIDE_DIR, DistroRule, is_our_mask, mask_text, rule_state
from ground.errors import InputError, KdumpCoalesceError, NeedsRootError
from ground.files import atomic_write

UNIT_NAME = "kdump-coalesce.service"
UNIT_DIR = "etc/systemd/system"
WANTED_BY = "multi-user.target"
STATE_DIR = "var/lib/kdump-coalesce"
# Made by systemd for the service (LogsDirectory=, RuntimeDirectory=); removed
# at uninstall when they did not exist before install (logs only when empty:
# trace files are incident evidence, --purge deletes them).
LOGS_DIR = "var/log/kdump-coalesce"
RUNTIME_DIR = "run/kdump-coalesce"
INSTALL_DIR = f"{STATE_DIR}/install"
MANIFEST = f"{INSTALL_DIR}/manifest.json"
BACKUP_DIR = f"{INSTALL_DIR}/backup"
MANIFEST_FORMAT = 1


class InstallError(KdumpCoalesceError):
    """install-service / uninstall-service could not finish; the message says
    what was done and what was not."""


def unit_template() -> str:
    return resources.files("kdump_coalesce").joinpath("data", UNIT_NAME).read_text()


def default_exec_start() -> str:
    """The command that runs this installation: the ``kdump-coalesce`` script
    next to this Python (a venv's bin/), else the one on PATH, else ``python
    -m kdump_coalesce``."""
    beside = os.path.join(os.path.dirname(sys.executable), "kdump-coalesce")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("kdump-coalesce")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m kdump_coalesce"


def render_unit(exec_start: str, run_args: Sequence[str] = ()) -> str:
    """The shipped unit with ``ExecStart`` set to ``exec_start run ARGS``."""
    lines = []
    replaced = False
    for line in unit_template().splitlines():
        if line.startswith("ExecStart="):
            args = " ".join(_systemd_quote(a) for a in run_args)
            line = f"ExecStart={exec_start} run" + (f" {args}" if args else "")
            replaced = True
        lines.append(line)
    if not replaced:
        raise InstallError(f"{UNIT_NAME}: the shipped unit has no ExecStart= line")
    return "\n".join(lines) + "\n"


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./:=,@+" for c in arg):
        return arg.replace("%", "%%")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the host: commands that only make sense on a live system ------------------------


@dataclass
class Host:
    """Where files live (``root``) and how to tell systemd/udev.  With a root
    other than / nothing is run: the tree is not a running system."""

    root: str = "/"
    report: Callable[[str], None] = print
    ran: list[list[str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return os.path.realpath(self.root) == "/"

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def systemd_running(self) -> bool:
        return self.live and os.path.isdir("/run/systemd/system")  # sd_booted(3)

    def udev_running(self) -> bool:
        return self.live and os.path.exists("/run/udev/control")

    def run(self, argv: list[str], *, check: bool = True) -> bool:
        self.ran.append(argv)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            if check:
                raise InstallError(f"{' '.join(argv)}: {exc}") from exc
            self.report(f"warning: {' '.join(argv)}: {exc}")
            return False
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            message = f"{' '.join(argv)} exited with {proc.returncode}" + (f": {detail[-1]}" if detail else "")
            if check:
                raise InstallError(message)
            self.report(f"warning: {message}")
            return False
        return True

    def reload_systemd(self) -> None:
        if self.systemd_running():
            self.run(["systemctl", "daemon-reload"])
        elif self.live:
            self.report("systemd is not running: skipped systemctl daemon-reload")

    def reload_udev(self) -> None:
        if self.udev_running():
            self.run(["udevadm", "control", "--reload"])
        elif self.live:
            self.report("udev is not running: skipped udevadm control --reload (the mask applies when it starts)")


# -- the manifest ---------------------------------------------------------------------


@dataclass
class Manifest:
    root: str
    actions: list[dict[str, Any]] = field(default_factory=list)
    dirs_created: list[str] = field(default_factory=list)  # the state/install dirs themselves
    service_dirs: list[str] = field(default_factory=list)  # LOGS_DIR/RUNTIME_DIR when absent before install
    started: bool = False
    enabled: bool = False
    version: str = __version__
    installed_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "installed_at": self.installed_at,
            "started": self.started,
            "enabled": self.enabled,
            "dirs_created": self.dirs_created,
            "service_dirs": self.service_dirs,
            "actions": self.actions,
        }

    @classmethod
    def load(cls, host: Host) -> Manifest | None:
        path = host.path(MANIFEST)
        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(path, f"unreadable install manifest: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("actions"), list):
            raise InputError(path, f"not an install manifest of format {MANIFEST_FORMAT}")
        return cls(
            root=host.root,
            actions=list(doc["actions"]),
            dirs_created=list(doc.get("dirs_created", [])),
            service_dirs=list(doc.get("service_dirs", [])),
            started=bool(doc.get("started")),
            enabled=bool(doc.get("enabled")),
            version=str(doc.get("version", "?")),
            installed_at=float(doc.get("installed_at", 0.0)),
        )

    def save(self, host: Host) -> None:
        atomic_write(host.path(MANIFEST), (json.dumps(self.to_json(), indent=1) + "\n").encode(), mode=0o644, make_parents=False)

    def find(self, rel: str) -> dict[str, Any] | None:
        for action in self.actions:
            if action.get("path") == rel and action["op"] != "mkdir":
                return action
        return None


def _ensure_dirs(host: Host, rel: str, created: list[str]) -> None:
    """mkdir -p, appending each directory it made to ``created`` (top-down)."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        full = host.path(sub)
        if not os.path.isdir(full):
            os.mkdir(full, 0o755)
            created.append(sub)


class Installer:
    """One install or uninstall run against a :class:`Host`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.manifest: Manifest | None = None

    # -- journalled changes ------------------------------------------------------

    def _record(self, action: dict[str, Any]) -> None:
        assert self.manifest is not None
        self.manifest.actions.append(action)
        self.manifest.save(self.host)

    def _mkdirs(self, rel: str, group: str) -> None:
        made: list[str] = []
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not os.path.isdir(self.host.path(sub)):
                self._record({"op": "mkdir", "path": sub, "group": group})
                os.mkdir(self.host.path(sub), 0o755)
                made.append(sub)

    def _backup(self, rel: str, group: str) -> dict[str, Any]:
        """Copy what is at ``rel`` into the backup dir; the manifest entry
        that restores it."""
        full = self.host.path(rel)
        st = os.lstat(full)
        action: dict[str, Any] = {
            "op": "replace", "path": rel, "group": group,
            "uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode & 0o7777,
            "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns,
        }
        if os.path.islink(full):
            action["kind"] = "symlink"
            action["target"] = os.readlink(full)
        else:
            if not os.path.isfile(full):
                raise InstallError(f"{full}: not a regular file or symlink; refusing to replace it")
            backup_rel = f"{BACKUP_DIR}/{len(self.manifest.actions) if self.manifest else 0}-{os.path.basename(rel)}"
            shutil.copy2(full, self.host.path(backup_rel), follow_symlinks=False)
            with open(full, "rb") as f:
                action["sha256"] = _sha256(f.read())
            action["kind"] = "file"
            action["backup"] = backup_rel
        return action

    def _write(self, rel: str, data: bytes, group: str, mode: int = 0o644) -> str:
        """Create or replace a file; returns "created", "replaced" or "updated"
        (a file this installation already owns)."""
        full = self.host.path(rel)
        owned = self.manifest.find(rel) if self.manifest else None
        if owned is not None:
            outcome = "updated"
        elif os.path.lexists(full):
            self._record(self._backup(rel, group))
            outcome = "replaced"
        else:
            self._record({"op": "create", "path": rel, "group": group, "kind": "file"})
            outcome = "created"
        atomic_write(full, data, mode=mode, make_parents=False)
        return outcome

    def _symlink(self, rel: str, target: str, group: str) -> str:
        full = self.host.path(rel)
        if os.path.islink(full) and os.readlink(full) == target:
            if self.manifest and self.manifest.find(rel):
                return "updated"
            return "present"  # someone made the same link: leave it theirs
        if os.path.lexists(full):
            self._record(self._backup(rel, group))
            os.unlink(full)
        else:
            self._record({"op": "create", "path": rel, "group": group, "kind": "symlink"})
        os.symlink(target, full)
        return "created"

    # -- install --------------------------------------------------------------------

    def begin(self) -> Manifest:
        host = self.host
        existing = Manifest.load(host)
        if existing is not None:
            self.manifest = existing
            return existing
        created: list[str] = []
        absent = [rel for rel in (LOGS_DIR, RUNTIME_DIR) if not os.path.lexists(host.path(rel))]
        _ensure_dirs(host, BACKUP_DIR, created)
        self.manifest = Manifest(root=host.root, dirs_created=created, service_dirs=absent)
        self.manifest.save(host)
        return self.manifest

    def install_unit(self, unit_text: str, *, enable: bool) -> None:
        self._mkdirs(UNIT_DIR, "systemd")
        rel = f"{UNIT_DIR}/{UNIT_NAME}"
        outcome = self._write(rel, unit_text.encode(), "systemd")
        self.host.report(f"{outcome} /{rel}")
        if enable:
            wants = f"{UNIT_DIR}/{WANTED_BY}.wants"
            self._mkdirs(wants, "systemd")
            link = f"{wants}/{UNIT_NAME}"
            outcome = self._symlink(link, f"/{rel}", "systemd")
            self.host.report(f"{outcome} /{link} (enabled for {WANTED_BY})")
            assert self.manifest is not None
            self.manifest.enabled = True
            self.manifest.save(self.host)

    def start(self) -> bool:
        """daemon-reload and (re)start; False when the service did not become ready."""
        host = self.host
        host.reload_systemd()
        if not host.systemd_running():
            if host.live:
                host.report("systemd is not running: the service was installed but not started")
            return True
        assert self.manifest is not None
        self.manifest.started = True
        self.manifest.save(host)
        # Type=notify: this returns when the daemon sent READY=1 (or failed).
        return host.run(["systemctl", "restart", UNIT_NAME], check=False)

    def mask_rules(self, rules: Sequence[DistroRule | str]) -> list[str]:
        host = self.host
        masked = []
        for rule in rules:
            name = rule.name if isinstance(rule, DistroRule) else rule
            state = rule_state(host.root, name)
            if not state.present:
                continue
            if state.masked_by_us:
                host.report(f"already masked: /{state.effective}")
                masked.append(name)
                continue
            if not state.active:
                host.report(f"left alone: /{state.effective} has no rules (already masked by someone else)")
                continue
            self._mkdirs(OVERRIDE_DIR, "udev")
            rel = f"{OVERRIDE_DIR}/{name}"
            shipped = state.shipped or rel
            self._write(rel, mask_text(rule, shipped).encode(), "udev")
            host.report(f"masked /{shipped} with /{rel}")
            masked.append(name)
        if masked:
            host.reload_udev()
        return masked

    # -- uninstall ------------------------------------------------------------------

    def undo(self, group: str) -> list[str]:
        """Undo the actions of one group (``udev``, ``systemd``), newest first."""
        assert self.manifest is not None
        notes = []
        keep = []
        for action in reversed(self.manifest.actions):
            if action.get("group") != group:
                keep.append(action)
                continue
            notes.extend(self._undo_one(action))
        self.manifest.actions = list(reversed(keep))
        self.manifest.save(self.host)
        return notes

    def _undo_one(self, action: dict[str, Any]) -> list[str]:
        host = self.host
        rel = action["path"]
        full = host.path(rel)
        op = action["op"]
        if op == "mkdir":
            try:
                os.rmdir(full)
            except FileNotFoundError:
                return []
            except OSError:
                return [f"left /{rel}: not empty (holds files kdump-coalesce did not put there)"]
            return [f"removed /{rel}/"]
        if op == "create":
            if not os.path.lexists(full):
                return [f"already gone: /{rel}"]
            os.unlink(full)
            return [f"removed /{rel}"]
        if op == "replace":
            _restore(host, action)
            return [f"restored /{rel}"]
        raise InstallError(f"{host.path(MANIFEST)}: unknown action {op!r}")

    def stop(self) -> None:
        host = self.host
        assert self.manifest is not None
        if host.systemd_running():
            host.run(["systemctl", "stop", UNIT_NAME], check=False)
            self.manifest.started = False
            self.manifest.save(host)
        elif self.manifest.started and host.live:
            host.report("systemd is not running: could not stop the service")

    def remove_outputs(self, textfile: str | None, purge: bool) -> list[str]:
        """What the running service made: its metrics textfile (node_exporter
        would export it, stale, forever), /run/kdump-coalesce, and
        /var/log/kdump-coalesce when install found none (kept when it holds
        trace files, unless ``purge``)."""
        host = self.host
        assert self.manifest is not None
        notes = []
        if textfile:
            full = host.path(textfile.lstrip("/"))
            try:
                with open(full, "rb") as f:
                    ours = f.read(64).startswith(b"# HELP kdump_coalesce_")
            except OSError:
                ours = False
            if ours:
                os.unlink(full)
                notes.append(f"removed {textfile}")
        for rel in self.manifest.service_dirs:
            full = host.path(rel)
            if not os.path.isdir(full):
                continue
            if rel == RUNTIME_DIR or purge or not os.listdir(full):
                shutil.rmtree(full)
                notes.append(f"removed /{rel}/")
            else:
                notes.append(f"kept /{rel}/: it holds trace files (--purge deletes them)")
        return notes

    def finish_uninstall(self, purge: bool) -> list[str]:
        """Drop the manifest and backups, then the directories install made
        (the state directory with the daemon's staging area in it)."""
        host = self.host
        assert self.manifest is not None
        notes = []
        if self.manifest.actions:
            raise InstallError(f"{host.path(MANIFEST)}: {len(self.manifest.actions)} change(s) not undone; manifest kept")
        shutil.rmtree(host.path(INSTALL_DIR))
        for rel in reversed(self.manifest.dirs_created):
            full = host.path(rel)
            if not os.path.isdir(full):
                continue
            if rel == STATE_DIR:
                shutil.rmtree(full)
                notes.append(f"removed /{rel}/")
                continue
            try:
                os.rmdir(full)
                notes.append(f"removed /{rel}/")
            except OSError:
                notes.append(f"left /{rel}/: not empty")
        if purge and STATE_DIR not in self.manifest.dirs_created and os.path.isdir(host.path(STATE_DIR)):
            shutil.rmtree(host.path(STATE_DIR))
            notes.append(f"purged /{STATE_DIR}/")
        return notes


def _restore(host: Host, action: dict[str, Any]) -> None:
    full = host.path(action["path"])
    tmp = f"{full}.kdump-coalesce.restore"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    if action["kind"] == "symlink":
        os.symlink(action["target"], tmp)
    else:
        shutil.copy2(host.path(action["backup"]), tmp)
        with open(tmp, "rb") as f:
            if _sha256(f.read()) != action["sha256"]:
                os.unlink(tmp)
                raise InstallError(f"{host.path(action['backup'])}: backup does not match the manifest; /{action['path']} not restored")
        os.chmod(tmp, action["mode"])
    os.lchown(tmp, action["uid"], action["gid"])
    if action["kind"] != "symlink":
        os.chmod(tmp, action["mode"])  # chown clears set-id bits
    os.utime(tmp, ns=(action["atime_ns"], action["mtime_ns"]), follow_symlinks=False)
    os.replace(tmp, full)


# -- the two operations -----------------------------------------------------------------


@dataclass
class InstallOptions:
    exec_start: str
    run_args: tuple[str, ...] = ()
    enable: bool = True
    start: bool = True
    mask: bool = True
    extra_rules: tuple[str, ...] = ()


def install(host: Host, options: InstallOptions) -> Installer:
    _check_root(host)
    inst = Installer(host)
    manifest = inst.begin()
    if manifest.actions:
        host.report(f"updating the installation recorded in /{MANIFEST}")
    inst.install_unit(render_unit(options.exec_start, options.run_args), enable=options.enable)
    if options.start and not inst.start():
        raise InstallError(
            f"{UNIT_NAME} did not start (see: journalctl -u {UNIT_NAME}); the distro's udev rule was left active "
            "so kdump still follows hotplug; fix the cause and run install-service again, or uninstall-service"
        )
    if options.mask:
        rules: list[DistroRule | str] = [*KNOWN_RULES, *options.extra_rules]
        if not inst.mask_rules(rules):
            host.report("no distro kdump udev rule found (kdump-tools / kdump-utils / kdump not installed?): nothing to mask")
    return inst


def uninstall(host: Host, *, purge: bool = False, textfile: str | None = None) -> list[str]:
    _check_root(host)
    inst = Installer(host)
    manifest = Manifest.load(host)
    if manifest is None:
        raise InstallError(f"{host.path(MANIFEST)}: no install manifest: nothing installed by install-service to undo")
    inst.manifest = manifest
    notes = inst.undo("udev")
    for note in notes:
        host.report(note)
    if notes:
        host.reload_udev()
    inst.stop()
    for note in inst.undo("systemd"):
        host.report(note)
    host.reload_systemd()
    for note in inst.remove_outputs(textfile, purge):
        host.report(note)
    for note in inst.finish_uninstall(purge):
        host.report(note)
    return notes


def _check_root(host: Host) -> None:
    if host.live and os.geteuid() != 0:
        raise NeedsRootError("changing /etc/systemd/system and /etc/udev/rules.d")
