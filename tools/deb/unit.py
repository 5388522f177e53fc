#!/usr/bin/python3
"""Write the Debian package's kdump-coalesce.service: the unit install-service
installs (kdump_coalesce/data/kdump-coalesce.service, every setting and its
reason kept) with ``ExecStart=/usr/bin/kdump-coalesce run`` and the udev
take-over: the distro's reload-per-event rule is masked once the daemon is
ready and given back when it stops (kdump_coalesce._distro_rules.take_over).

    tools/deb/unit.py > debian/kdump-coalesce.service
"""

from __future__ import annotations

import sys

EXEC = "/usr/bin/kdump-coalesce"
TAKEOVER = "/usr/libexec/kdump-coalesce/udev-takeover"

DOCUMENTATION = "Documentation=man:kdump-coalesce(8) file:/usr/share/doc/kdump-coalesce/operations.md.gz\n"

TAKEOVER_LINES = f"""\
# The udev take-over (docs/operations.md, "The Debian package"): the distro's
# reload-per-event rule (kdump-tools' 50-kdump-tools.rules) is masked in
# /run/udev/rules.d only once the daemon is ready (ExecStartPost= runs after
# READY=1), given back before the daemon is signalled to stop (ExecStop=), and
# again after it exited for whatever reason (ExecStopPost=): whenever the
# daemon is not running, the distro's rule is.  '+': outside the sandbox
# (ProtectSystem=strict keeps /run/udev read-only); '-': a failure leaves the
# distro's rule running (double reloads, reported), never fails the service.
# To keep the distro's rule: `systemctl edit kdump-coalesce`, with
# "ExecStartPost=" (empty) under [Service].
ExecStartPost=-+{TAKEOVER} take-over
ExecStop=-+{TAKEOVER} give-back
ExecStopPost=-+{TAKEOVER} give-back
"""



def packaged_unit() -> str:
    from kdump_coalesce._install import render_unit

    lines = []
    for line in render_unit(EXEC).splitlines(keepends=True):
        lines.append(line)
        if line.startswith("Description="):
            lines.append(DOCUMENTATION)
        if line.startswith("ExecStart="):
            lines.append(TAKEOVER_LINES)
    text = "".join(lines)
    if TAKEOVER not in text:
        raise SystemExit("unit.py: the template has no ExecStart= line")
    return text


def main() -> int:
    sys.stdout.write(packaged_unit())
    return 0


if __name__ == "__main__":
    sys.exit(main())
