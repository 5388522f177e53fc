"""``kdump-coalesce status``: what the running daemon last did."""

from __future__ import annotations

import argparse
import json
import os

from updater import UpdaterSettings, format_status, read_status, status_exit, status_json

from ground.config import load_toml, section_from
from ._common import DEFAULT_CONFIG, add_config_flag

NAME = "status"
ORDER = 60

EPILOG = """\
exit status: 0 kdump is current (or dry-run / kernel mode is healthy),
             1 the last reload failed or the daemon died, 3 no status file.

examples:
  kdump-coalesce status
      kdump loaded or not, backend and why, last batch and reload, header summary
  kdump-coalesce status --json | jq .last_reload.window_s
      the machine-readable document the daemon writes after every batch
  kdump-coalesce status --status-file /tmp/kc/status.json
      a daemon started with another --status-file
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="show what the daemon last did (kdump loaded, last batch and reload)",
        description="Read the status file the daemon rewrites after every batch and show it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.add_argument("--status-file", dest="updater__status_file", metavar="PATH", default=None, help="status file (default: [updater] status-file)")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Only [updater] matters here; 'run' validates the whole file.
    path = args.config if args.config is not None else (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else "")
    document = load_toml(path) if path else {}
    settings = section_from(UpdaterSettings, "updater", document, path, args)
    status = read_status(settings.status_file)
    if args.json:
        print(json.dumps(status_json(status), indent=1, sort_keys=True))
    else:
        for line in format_status(status):
            print(line)
    return status_exit(status)
