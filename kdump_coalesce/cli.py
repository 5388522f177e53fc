"""The ``kdump-coalesce`` command line.

Each command lives in ``kdump_coalesce/commands/<name>.py`` and defines
``NAME``, ``ORDER`` (position in ``--help``) and ``register(subparsers)``,
which adds its subparser and sets ``func`` to a callable taking the parsed
arguments and returning the exit status.  Commands are discovered, so adding
one touches no other file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from . import __version__, commands
from ground.errors import EXIT_BAD_INPUT, KdumpCoalesceError

USAGE = """\
examples:
  sudo kdump-coalesce run                      run the daemon (live sources, auto backend)
  sudo kdump-coalesce doctor                   what this host can do, and what to fix
  sudo kdump-coalesce trace --plain            watch hotplug events and reloads live
  kdump-coalesce replay --scenario resize:32G:512G --json
                                               fold the 3840-event resize into batches
  kdump-coalesce replay /var/tmp/incident.jsonl
                                               re-run a recorded trace through the coalescer
  kdump-coalesce status                        what the daemon last did

Run 'kdump-coalesce COMMAND --help' for a command's options and examples.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps epilogs' example layout; wraps option help normally."""


def command_modules() -> list[ModuleType]:
    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdump-coalesce",
        description="Keep kdump's elfcorehdr correct across CPU and memory hotplug: "
        "merge each burst of hotplug events into one batch, then reload the crash kernel once.",
        epilog=USAGE,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KdumpCoalesceError as exc:
        print(f"kdump-coalesce {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `kdump-coalesce replay ... | head`: the reader went away; not an error.
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
