"""The distros' reload-per-event udev rules, and masking them.

Each distro's kdump package reloads the crash kernel from a udev rule on every
CPU/memory hotplug event (kernel-facts.md section 1):

- Debian/Ubuntu ``kdump-tools``: ``50-kdump-tools.rules`` runs ``kdump-config
  try-reload`` synchronously for every memory online/offline and cpu
  add/remove/online (kdump-tools 1:1.8.1, /lib/udev/rules.d);
- Fedora/RHEL ``kdump-utils`` (``kexec-tools`` before Fedora 40):
  ``98-kexec.rules`` starts ``kdump-udev-throttler`` (/usr/lib/udev/rules.d);
- SUSE ``kdump``: ``70-kdump.rules`` (/usr/lib/udev/rules.d).

With kdump-coalesce running, that rule must not run as well: the two would
both reload (each reload a window without a crash kernel, and the rule's
header races ours).  udev gives a rules file in /etc/udev/rules.d precedence
over a same-named one in /run/udev/rules.d and the library directories
(udev(7)), so a same-named file with no rules in /etc masks the distro's.  Our
mask is a comments-only file that says who wrote it and how to undo it, so an
operator who finds it knows what it is.

Two ways to hold that mask, one per way of installing:

- ``install-service`` (a checkout) writes it in /etc/udev/rules.d once the
  service is ready and keeps it until ``uninstall-service``;
- the Debian package's unit masks in /run/udev/rules.d instead
  (:func:`take_over`, its ``ExecStartPost=``: after READY=1) and unmasks
  (:func:`give_back`, its ``ExecStop=``, before the daemon is signalled, and
  ``ExecStopPost=``): the rule is masked exactly while the daemon runs, so a
  daemon that stops, crashes or never gets ready hands hotplug back to the
  distro's rule at once, and after a reboot the rule runs until the daemon is
  ready again.  /run is below /etc in udev's order, so an administrator's own
  file in /etc/udev/rules.d still wins, and nothing in /etc is touched
  (docs/operations.md, "The Debian package").

Paths are all relative to a ``root`` so that tests (and ``--root``) work on a
temporary tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Highest precedence first (udev(7); /lib/udev is the pre-merged-/usr spelling).
RULE_DIRS = (
    "etc/udev/rules.d",
    "run/udev/rules.d",
    "usr/local/lib/udev/rules.d",
    "usr/lib/udev/rules.d",
    "lib/udev/rules.d",
)
OVERRIDE_DIR = "etc/udev/rules.d"
RUNTIME_DIR = "run/udev/rules.d"
MASK_MARKER = "# kdump-coalesce: masked"


@dataclass(frozen=True, slots=True)
class DistroRule:
    name: str
    package: str
    what: str


KNOWN_RULES = (
    DistroRule("50-kdump-tools.rules", "kdump-tools (Debian, Ubuntu)", "kdump-config try-reload on every memory/cpu event"),
    DistroRule("98-kexec.rules", "kdump-utils / kexec-tools (Fedora, RHEL)", "kdump-udev-throttler -> kdumpctl reload"),
    DistroRule("70-kdump.rules", "kdump (SUSE)", "load-once.sh reload on every memory/cpu event"),
)


UNDO_INSTALL_SERVICE = "Undo with: kdump-coalesce uninstall-service"
UNDO_RUNTIME = "It goes when kdump-coalesce.service stops (ExecStop=), and at reboot"


def mask_text(rule: DistroRule | str, shipped: str, undo: str = UNDO_INSTALL_SERVICE) -> str:
    name = rule.name if isinstance(rule, DistroRule) else rule
    package = rule.package if isinstance(rule, DistroRule) else "the distro's kdump package"
    return (
        f"{MASK_MARKER} {name}\n"
        f"# This empty rules file overrides /{shipped} from {package},\n"
        "# which reloads the crash kernel once per CPU/memory hotplug event.\n"
        "# kdump-coalesce.service updates kdump once per burst instead.\n"
        f"# {undo}\n"
    )


def is_our_mask(data: bytes) -> bool:
    return data.startswith(MASK_MARKER.encode())


def has_rules(data: bytes) -> bool:
    """Whether a rules file has any rule line (comments and blank lines only
    means it masks whatever it overrides)."""
    for line in data.decode("utf-8", "replace").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class RuleState:
    """Where one rules file name stands on a host."""

    name: str
    effective: str | None  # path (relative to root) udev uses, None when there is none
    shipped: str | None  # the lowest-precedence copy: what the package installed
    masked_by_us: bool
    active: bool  # udev runs rules from the effective file

    @property
    def present(self) -> bool:
        return self.effective is not None


def _read(path: str) -> bytes | None:
    try:
        if os.path.islink(path) and os.path.realpath(path) == "/dev/null":
            return b""  # the canonical udev mask
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def rule_state(root: str, name: str) -> RuleState:
    copies = [os.path.join(d, name) for d in RULE_DIRS if os.path.lexists(os.path.join(root, d, name))]
    if not copies:
        return RuleState(name, None, None, False, False)
    effective = copies[0]
    data = _read(os.path.join(root, effective))
    ours = data is not None and is_our_mask(data)
    active = data is not None and has_rules(data)
    return RuleState(name, effective, copies[-1], ours, active)


def distro_rules(root: str = "/") -> list[tuple[DistroRule, RuleState]]:
    """Every known distro rule present on the host, with its state."""
    out = []
    for rule in KNOWN_RULES:
        state = rule_state(root, rule.name)
        if state.present:
            out.append((rule, state))
    return out


def active_distro_rules(root: str = "/") -> list[tuple[DistroRule, RuleState]]:
    """The distro reload rules udev would run now: with kdump-coalesce running
    too, every hotplug burst is reloaded twice (``doctor`` and ``status`` say so)."""
    return [(rule, state) for rule, state in distro_rules(root) if state.active]


def take_over(root: str = "/") -> list[str]:
    """Mask, in /run/udev/rules.d, every known distro rule udev would run
    from a library directory; one line per change or refusal.  A rule already
    overridden in /etc or /run (by an administrator, or by install-service) is
    left to that file.  The caller reloads udev when something changed."""
    notes = []
    for rule, state in distro_rules(root):
        assert state.effective is not None
        if state.effective.startswith((OVERRIDE_DIR + "/", RUNTIME_DIR + "/")):
            if state.active:
                notes.append(f"left /{state.effective} alone: an override that still reloads on every event")
            continue
        if not state.active:
            continue
        rel = os.path.join(RUNTIME_DIR, rule.name)
        os.makedirs(os.path.join(root, RUNTIME_DIR), mode=0o755, exist_ok=True)
        tmp = os.path.join(root, rel + ".kdump-coalesce.tmp")
        with open(tmp, "w") as f:
            f.write(mask_text(rule, state.effective, UNDO_RUNTIME))
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(root, rel))
        notes.append(f"masked /{state.effective} with /{rel}")
    return notes


def give_back(root: str = "/") -> list[str]:
    """Remove the masks :func:`take_over` wrote (files in /run/udev/rules.d
    that start with our marker, nothing else); one line per file removed."""
    notes = []
    for rule in KNOWN_RULES:
        rel = os.path.join(RUNTIME_DIR, rule.name)
        data = _read(os.path.join(root, rel))
        if data is not None and is_our_mask(data) and not os.path.islink(os.path.join(root, rel)):
            os.unlink(os.path.join(root, rel))
            notes.append(f"removed /{rel}: /{rule_state(root, rule.name).effective or rule.name} is active again")
    if notes:
        try:
            os.rmdir(os.path.join(root, RUNTIME_DIR))  # only when empty: what take_over may have made
        except OSError:
            pass
    return notes
