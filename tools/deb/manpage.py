#!/usr/bin/python3
"""Write kdump-coalesce(8) from the argparse parser the program itself uses:
the top-level help, then every command with its usage, description, options
and examples, so the man page never says something ``--help`` does not.

    tools/deb/manpage.py [--date YYYY-MM-DD] > kdump-coalesce.8

debian/rules runs it at build time, against the staged packages and Debian's
python3-* modules (which makes it the build's import test too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

FILES = [
    ("/etc/kdump-coalesce/config.toml", "configuration (every key is also a run flag); a conffile"),
    ("/run/kdump-coalesce/status.json", "what the daemon last loaded; read by status"),
    ("/var/log/kdump-coalesce/", "trace files, when [daemon] trace-file points there"),
    ("/var/lib/prometheus/node-exporter/kdump-coalesce.prom", "metrics for node_exporter's textfile collector"),
    ("/run/udev/rules.d/", "while the service runs, a comments-only file there masks the distro's per-event reload rule"),
    ("/usr/share/kdump-coalesce/monitoring/", "Prometheus alerting rules and a Grafana dashboard"),
]


def roff(text: str) -> str:
    """Escape for roff: backslashes, and lines that would start a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def preformatted(text: str) -> str:
    body = "\n".join(line if line.strip() else ".sp" for line in roff(text.strip("\n")).split("\n"))
    return ".nf\n" + body + "\n.fi"


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _options(parser: argparse.ArgumentParser) -> str:
    """The options part of ``--help`` (everything after usage and description)."""
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        formatter.start_section(group.title)
        formatter.add_text(group.description)
        formatter.add_arguments(group._group_actions)
        formatter.end_section()
    return formatter.format_help()


def manpage(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    os.environ["COLUMNS"] = "78"  # argparse wraps to the terminal width; a man page has none
    name = parser.prog
    out = [
        f'.TH {name.upper()} 8 "{date}" "{name} {version}" "System Administration"',
        ".SH NAME",
        f"{roff(name)} \\- {roff((parser.description or '').split(':')[0].strip().rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {roff(name)}",
        "\\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        ".PP",
        "Run as a systemd service (\\fBkdump\\-coalesce.service\\fR), it masks the distro's per\\-event kdump reload",
        "udev rule once it is ready and gives it back when it stops.",
        ".SH COMMANDS",
    ]
    for cmd, summary, sub in _subparsers(parser):
        out += [".SS " + roff(cmd), roff(summary), ".PP"]
        usage = sub.format_usage().removeprefix("usage: ")
        out += [preformatted(usage)]
        if sub.description:
            out += [roff(sub.description), ".PP"]
        out += [preformatted(_options(sub))]
        if sub.epilog:
            out += [preformatted(sub.epilog)]
    if parser.epilog:
        out += [".SH EXAMPLES", preformatted(parser.epilog)]
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", f".I {roff(path)}", roff(what)]
    out += [
        ".SH SEE ALSO",
        "\\fBkdump\\-config\\fR(8), \\fBkexec\\fR(8), \\fBudev\\fR(7), \\fBsystemd.service\\fR(5),",
        "/usr/share/doc/kdump\\-coalesce/",
    ]
    return "\n".join(line for line in out if line) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--date", default=None, help="the page's date (default: SOURCE_DATE_EPOCH, else today)")
    args = ap.parse_args(argv)
    date = args.date or time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    from kdump_coalesce import __version__
    from kdump_coalesce.cli import build_parser

    sys.stdout.write(manpage(build_parser(), __version__, date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
