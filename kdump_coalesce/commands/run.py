"""``kdump-coalesce run``: the daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

import updater
from coalescer import TraceObserver
from ground.observer import FanOut
from probes import open_sources
from ground.kexec_log import KexecCallLog
from ground.tracefile import TraceHeader, open_trace_for_writing

from .. import ops
from .._log import LogObserver
from ground.config import section_from
from ground.sysfs import block_size_bytes
from ..daemon import Daemon, DaemonSettings, Updater, settings_sections
from ground.errors import EXIT_OK, ConfigError
from ._common import add_config_flag, add_flags_of, read_config

NAME = "run"
ORDER = 10

EPILOG = """\
examples:
  sudo kdump-coalesce run
      live sources (BPF where it can probe, uevents for the rest), backend chosen
      from what the host can do; says what it chose and why
  sudo kdump-coalesce run --backend dry-run --staging-dir /var/tmp/kc
      build and stage what each batch would load, load nothing
  sudo kdump-coalesce run --trace-file /var/log/kdump-coalesce/trace.jsonl
      also record every event, batch and reload (replay reads it back)
  kdump-coalesce run --source scenario:resize:32G:512G:dimm=1G --speed 10 --backend dry-run
      drive the daemon with a synthetic resize at 10x speed

signals: SIGTERM/SIGINT stop the sources, flush the open batch and finish its
reload before exiting (kdump is never left unloaded by a stop); a second
signal stops at once.
"""


# Every stage's config sections, in the order --help shows them.
SECTIONS: dict[str, type[Any]] = settings_sections({**updater.SECTIONS, **ops.SECTIONS})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="run the daemon: live hotplug events -> batches -> one kdump update per batch",
        description="Watch CPU and memory hotplug, merge each burst into one batch, and update kdump "
        "once per batch from the live system state.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log every event (debug priority)")
    for section, cls in SECTIONS.items():
        add_flags_of(p.add_argument_group(f"[{section}] in the config file"), section, cls)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    document, path = read_config(args, SECTIONS)
    sections = {name: section_from(cls, name, document, path, args) for name, cls in SECTIONS.items()}
    settings: DaemonSettings = sections["daemon"]
    if settings.speed < 0:
        raise ConfigError("--speed", "must be >= 0")
    log = LogObserver(sys.stderr, fmt=settings.log_format, verbose=args.verbose)
    kexec_log = KexecCallLog()
    selection = open_sources(settings.source, speed=settings.speed or None, kexec_log=kexec_log)
    observer = FanOut([log])
    writer = None
    if settings.trace_file:
        header = TraceHeader.for_this_host(selection.block_size or _block_size())
        try:
            writer = open_trace_for_writing(settings.trace_file, header)
        except OSError as exc:
            raise ConfigError(settings.trace_file, f"cannot write trace: {exc.strerror}") from exc
        observer.add(TraceObserver(writer, clock=trio.current_time))

    async def main() -> None:
        stage: Updater = await updater.open_updater(sections, observer, kexec_log)
        daemon = Daemon(sections["coalescer"], selection.sources, stage, observer, log, notes=list(selection.notes))
        ops.attach(daemon, sections)
        await daemon.run()

    try:
        trio.run(main)
    finally:
        if writer is not None:
            writer.close()
    return EXIT_OK


def _block_size() -> int:
    # The trace header's block size; 128 MiB (x86's default) when this kernel has no memory hotplug.
    return block_size_bytes() or 128 << 20
