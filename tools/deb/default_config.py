#!/usr/bin/python3
"""Write the commented default /etc/kdump-coalesce/config.toml from the
config declarations themselves (every section ``run`` reads, every key with
its help and its default, all commented out), so the shipped file cannot drift
from the code: tests/unit/test_packaging.py compares the checked-in
kdump_coalesce/data/config.toml with this output.

    tools/deb/default_config.py > kdump_coalesce/data/config.toml
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from typing import Any

HEADER = """\
# kdump-coalesce configuration, read by `kdump-coalesce run` (the service).
#
# Every key is commented out and shows its default: uncomment a line to
# change it, then `systemctl restart kdump-coalesce`.  Keys with a flag can
# also be given to `run` (`kdump-coalesce run --help`); a flag wins.  An
# unknown key or a bad value is a one-line error naming it (exit status 2),
# and the daemon does not start: check `systemctl status kdump-coalesce`.
#
# The capture kernel, initrd and command line come from kdump-tools'
# /etc/default/kdump-tools unless [kexec] says otherwise.  Reference:
# /usr/share/doc/kdump-coalesce/operations.md.gz, "Configuration reference".
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


def default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{field.name} has no default")


def render(sections: dict[str, type[Any]]) -> str:
    out = [HEADER]
    for name, cls in sections.items():
        fields = [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
        if not fields:
            continue
        out.append(f"[{name}]")
        for f in fields:
            key = f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                help_text += f" (one of: {', '.join(choices)})"
            for line in textwrap.wrap(help_text, 76):
                out.append(f"# {line}")
            out.append(f"#{key} = {toml_value(default_of(f))}")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    from kdump_coalesce.commands.run import SECTIONS

    sys.stdout.write(render(SECTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
