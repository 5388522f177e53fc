"""``kdump-coalesce install-service`` / ``uninstall-service``: the systemd unit
and taking over from the distro's udev rule (see ``kdump_coalesce._install``)."""

from __future__ import annotations

import argparse
import os
import sys

from .._install import MANIFEST, UNIT_DIR, UNIT_NAME, Host, InstallOptions, default_exec_start, install, render_unit, uninstall
from ground.errors import EXIT_OK, ConfigError, InputError
from ._common import DEFAULT_CONFIG, add_config_flag

NAME = "install-service"
ORDER = 80

INSTALL_EPILOG = f"""\
what it changes (all recorded in /{MANIFEST}, undone by uninstall-service):
  /{UNIT_DIR}/{UNIT_NAME}                  the unit (Type=notify, after the distro's kdump service)
  /{UNIT_DIR}/multi-user.target.wants/{UNIT_NAME}   enabled at boot
  /etc/udev/rules.d/50-kdump-tools.rules   masks Debian/Ubuntu kdump-tools' reload-per-event rule
  /etc/udev/rules.d/98-kexec.rules         masks Fedora/RHEL kdump-utils' rule
  /etc/udev/rules.d/70-kdump.rules         masks SUSE kdump's rule
  (only the rules that are installed; a file already there is backed up first)

The service is started (systemd waits for its READY=1) before the rule is
masked: if it does not start, the rule stays active and the command fails.

examples:
  sudo kdump-coalesce install-service
      install, enable and start the service; mask the distro's rule
  sudo kdump-coalesce install-service --print
      show the unit that would be installed, change nothing
  kdump-coalesce install-service --root /tmp/image --no-start
      install into an image tree (nothing is started or reloaded there)
  sudo kdump-coalesce install-service --mask-rule 99-local-kdump.rules
      also mask a site-local rule that reloads kdump
"""

UNINSTALL_EPILOG = f"""\
Undoes exactly what install-service recorded in /{MANIFEST}: the distro's
udev rule is unmasked first (udev reloaded), then the service is stopped and
its unit removed; files install-service replaced get their content, mode,
owner and timestamps back.  The metrics textfile and /run/kdump-coalesce go;
/var/log/kdump-coalesce stays when it holds trace files (--purge deletes it).

examples:
  sudo kdump-coalesce uninstall-service
  sudo kdump-coalesce uninstall-service --purge
  kdump-coalesce uninstall-service --root /tmp/image
"""


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        metavar="DIR",
        default="/",
        help="operate on the tree under DIR instead of / (an image, a test); nothing is started or reloaded there",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-service",
        help="install and start the systemd service; mask the distro's reload-per-event udev rule",
        description="Install kdump-coalesce.service, enable and start it, then mask the distro kdump "
        "package's udev rule that reloads the crash kernel once per hotplug event.",
        epilog=INSTALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_root(p)
    p.add_argument("--exec", dest="exec_start", metavar="CMD", default=None, help="the command ExecStart= runs (default: this installation's kdump-coalesce)")
    p.add_argument("--no-enable", dest="enable", action="store_false", help="do not enable the unit at boot")
    p.add_argument("--no-start", dest="start", action="store_false", help="do not start the service now")
    p.add_argument("--no-mask", dest="mask", action="store_false", help="leave the distro's udev rule active (every burst is then reloaded twice)")
    p.add_argument("--mask-rule", action="append", default=[], metavar="NAME", help="also mask this udev rules file name (repeatable)")
    p.add_argument("--print", dest="print_unit", action="store_true", help="print the unit file and exit; change nothing")
    p.set_defaults(func=run_install)

    u = sub.add_parser(
        "uninstall-service",
        help="stop and remove the service; restore the distro's udev rule exactly",
        description="Undo install-service from its manifest: unmask the distro's udev rule, stop and remove the unit.",
        epilog=UNINSTALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_root(u)
    u.add_argument("--purge", action="store_true", help="also delete /var/lib/kdump-coalesce and the trace files in /var/log/kdump-coalesce")
    add_config_flag(u)
    u.set_defaults(func=run_uninstall)


def _host(args: argparse.Namespace) -> Host:
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise InputError("--root", f"{root} is not a directory")
    return Host(root=root, report=lambda line: print(f"kdump-coalesce {args.command}: {line}", file=sys.stderr))


# The unit runs with PrivateTmp=yes: the service gets an empty /tmp and
# /var/tmp of its own, so an executable (or a venv) there can never start.
HIDDEN_FROM_UNIT = ("/tmp/", "/var/tmp/")


def check_exec_start_visible(exec_start: str, what: str) -> None:
    """Refuse, before touching anything, a unit that could not start."""
    import shlex

    try:
        program = shlex.split(exec_start)[0]
    except (ValueError, IndexError):
        raise ConfigError("--exec", f"not a command: {exec_start!r}") from None
    resolved = os.path.realpath(program)
    for hidden in HIDDEN_FROM_UNIT:
        if resolved.startswith(hidden) or program.startswith(hidden):
            raise ConfigError(
                what,
                f"{program} is under {hidden.rstrip('/')}, which the unit's PrivateTmp=yes hides from the service: "
                "install kdump-coalesce elsewhere (e.g. a venv in /opt) or pass --exec",
            )


def run_install(args: argparse.Namespace) -> int:
    exec_start = args.exec_start or default_exec_start()
    check_exec_start_visible(exec_start, "--exec" if args.exec_start else "this installation")
    if args.print_unit:
        sys.stdout.write(render_unit(exec_start))
        return EXIT_OK
    for name in args.mask_rule:
        if "/" in name or not name.endswith(".rules"):
            raise ConfigError("--mask-rule", f"expected a rules file name like 99-local.rules, got {name!r}")
    host = _host(args)
    install(host, InstallOptions(exec_start, enable=args.enable, start=args.start, mask=args.mask, extra_rules=tuple(args.mask_rule)))
    host.report("done")
    return EXIT_OK


def _textfile(args: argparse.Namespace, host: Host) -> str | None:
    """The metrics textfile the service wrote: [metrics] textfile of the
    config in effect (under --root), else the default."""
    from .._metrics import MetricsSettings
    from ground.config import load_toml, section_from

    path = args.config or host.path(DEFAULT_CONFIG.lstrip("/"))
    document = load_toml(path) if (args.config or os.path.exists(path)) else {}
    metrics = section_from(MetricsSettings, "metrics", document, path, None)
    return metrics.textfile or None


def run_uninstall(args: argparse.Namespace) -> int:
    host = _host(args)
    uninstall(host, purge=args.purge, textfile=_textfile(args, host))
    host.report("done")
    return EXIT_OK
