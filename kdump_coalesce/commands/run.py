"""``kdump-coalesce run``: the daemon."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping
from typing import Any

import trio

from coalescer import Batch, FanOut, TraceObserver
from probes import KexecCallLog, open_sources
from probes.tracefile import TraceHeader, open_trace_for_writing

from .._log import LogObserver
from ..config import add_section_flags, section_from
from ..daemon import Daemon, DaemonSettings, Updater, settings_sections
from ..errors import EXIT_OK, ConfigError
from ._common import add_config_flag, read_config

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


def _optional_module(name: str) -> Any:
    """Stages that plug in (the updater's backends, the operations layer) are
    looked up at run time so that the daemon can say which are missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _extra_sections() -> dict[str, type[Any]]:
    sections: dict[str, type[Any]] = {}
    for module_name in ("updater", "kdump_coalesce.ops"):
        module = _optional_module(module_name)
        sections.update(getattr(module, "SECTIONS", {}) if module is not None else {})
    return sections


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
    for section, cls in settings_sections(_extra_sections()).items():
        add_section_flags(p.add_argument_group(f"[{section}] in the config file"), section, cls)
    p.set_defaults(func=run)


class LogOnlyUpdater:
    """Stands in when this build has no updater: says so, loads nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.batches = 0

    async def consume(self, batch: Batch) -> None:
        self.batches += 1

    async def reconcile(self) -> None:
        return None

    def describe(self) -> str:
        return f"none: {self.reason}; batches are logged, nothing is loaded"

    def status(self) -> dict[str, Any]:
        return {"backend": "none", "reason": self.reason, "batches": self.batches}

    async def aclose(self) -> None:
        return None


async def _open_updater(sections: Mapping[str, Any], observer: FanOut, kexec_log: KexecCallLog) -> Updater:
    module = _optional_module("updater")
    factory = getattr(module, "open_updater", None) if module is not None else None
    if factory is None:
        return LogOnlyUpdater("the updater is not part of this build")
    updater: Updater = await factory(sections, observer, kexec_log)
    return updater


def run(args: argparse.Namespace) -> int:
    known = settings_sections(_extra_sections())
    document, path = read_config(args, known)
    sections = {name: section_from(cls, name, document, path, args) for name, cls in known.items()}
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
        updater = await _open_updater(sections, observer, kexec_log)
        daemon = Daemon(sections["coalescer"], selection.sources, updater, observer, log, notes=list(selection.notes))
        ops = _optional_module("kdump_coalesce.ops")
        if ops is not None:
            ops.attach(daemon, sections)
        await daemon.run()

    try:
        trio.run(main)
    finally:
        if writer is not None:
            writer.close()
    return EXIT_OK


def _block_size() -> int:
    try:
        with open("/sys/devices/system/memory/block_size_bytes") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 128 << 20
