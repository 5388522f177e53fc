"""``kdump-coalesce trace``: watch hotplug events, batches and kexec calls live.

What an SRE runs during an incident.  It runs the sources and the coalescer
exactly as ``run`` does, with a consumer that only records the batches:
nothing is ever loaded.  On a terminal it shows a live view (rich, redrawn
from a trio task); with ``--plain`` or without a TTY it prints one greppable
``key=value`` line per event, loss, batch and kexec call.  ``--output`` writes
the trace format that ``replay`` reads back.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import trio

from coalescer import BatchRecorder, CoalescerStage, Policy, TraceObserver, run_pipeline
from ground.observer import FanOut
from ground.records import Batch, KexecCallRecord, NoteRecord, Record
import probes
from probes import SOURCE_SPECS, open_sources
from ground.kexec_log import KexecCall, KexecCallLog
from ground.events import EventsLost, HotplugEvent, Kind, SourceItem
from ground.tracefile import TraceHeader, TraceWriter, open_trace_for_writing

from ground.errors import EXIT_OK, ConfigError
from ._common import add_config_flag, add_policy_flags, policy_from, read_config

NAME = "trace"
ORDER = 30

EPILOG = """\
plain lines (one per thing, key=value, greppable):
  event ts=1576.001816767 kind=cpu action=offline cpu=1 source=bpf
  event ts=1580.120000000 kind=memory action=online range=0x100000000-0x107ffffff source=uevent
  lost ts=... source=uevent count=? reason=...
  batch 1 events=2 reason=urgent_quiet cpus_offline=1
  kexec ts=... syscall=kexec_load pid=812 comm=kexec flags=0x3e0001 window_ms=1250.1 ret=0
ts is CLOCK_MONOTONIC in seconds (the kernel's clock for BPF events, reception
time for uevents).

examples:
  sudo kdump-coalesce trace
      live view on a terminal: events/s, the open batch, online CPUs and memory, kdump state
  sudo kdump-coalesce trace --plain --output /var/tmp/incident.jsonl
      one line per event and batch, and a trace file for later
  kdump-coalesce replay /var/tmp/incident.jsonl --speed 1
      the recorded incident's batches again, at recorded speed
  sudo kdump-coalesce trace --plain --kind cpu --duration 60s | grep ' action=offline'
  sudo kdump-coalesce trace --dump-bpf
      print the BPF C program this host would load, and exit

Ctrl-C or SIGTERM ends it: the open batch is flushed, the file is complete.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="watch hotplug events, batches and kexec calls live (loads nothing)",
        description="Run the event sources and the coalescer as 'run' does, but only show and record what "
        "happens: no reload is ever made.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", default="auto", metavar="SPEC", help=f"event source: {SOURCE_SPECS} (default: auto)")
    p.add_argument("--plain", action="store_true", help="one line per event/batch instead of the live view (default without a TTY)")
    p.add_argument("--output", metavar="FILE", help="write events and batches to FILE in the trace format replay reads")
    p.add_argument("--duration", metavar="DUR", help="stop after DUR (e.g. 60s, 5m); default: until Ctrl-C/SIGTERM")
    p.add_argument("--kind", choices=[k.value for k in Kind], help="only this kind of event (default: both)")
    p.add_argument("--dump-bpf", action="store_true", help="print the BPF C program this host would load, and exit")
    add_config_flag(p)
    add_policy_flags(p)
    p.set_defaults(func=run)


# -- what is shown -----------------------------------------------------------


def _ts(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def event_line(item: SourceItem) -> str:
    if isinstance(item, EventsLost):
        count = "?" if item.count is None else str(item.count)
        return f"lost ts={_ts(item.ts_ns)} source={item.source} count={count} reason={item.reason!r}"
    what = f"cpu={item.cpu}" if item.kind is Kind.CPU else f"range={item.memory_range}"
    line = f"event ts={_ts(item.ts_ns)} kind={item.kind} action={item.action} {what} source={item.source}"
    if item.failed:
        line += f" ret={item.ret}"
    return line


def kexec_line(call: KexecCall) -> str:
    return (
        f"kexec ts={_ts(call.exit_ns)} syscall={call.syscall} pid={call.pid} comm={call.comm} "
        f"flags={call.flags:#x} window_ms={call.window_s * 1000:.1f} ret={call.ret}"
    )


@dataclass
class Stats:
    """Counters the live view shows; an observer, so it sees only accepted items."""

    window_s: float = 5.0
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent: deque[tuple[float, tuple[str, str]]] = field(default_factory=deque)
    lost_reports: int = 0
    lost_known: int = 0
    batches: list[Batch] = field(default_factory=list)
    last_event: str = ""

    def on_item(self, item: SourceItem) -> None:
        now = time.monotonic()
        if isinstance(item, EventsLost):
            self.lost_reports += 1
            self.lost_known += item.count or 0
            return
        key = (item.kind.value, item.action.value)
        self.totals[key] += 1
        self.recent.append((now, key))
        self.last_event = item.describe()

    def on_batch(self, batch: Batch) -> None:
        self.batches.append(batch)

    def on_record(self, record: Record) -> None:
        return None

    def rates(self) -> dict[tuple[str, str], float]:
        cutoff = time.monotonic() - self.window_s
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()
        counts = Counter(key for _, key in self.recent)
        return {key: counts.get(key, 0) / self.window_s for key in self.totals}


class PlainPrinter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def on_item(self, item: SourceItem) -> None:
        self._write(event_line(item))

    def on_batch(self, batch: Batch) -> None:
        self._write(batch.describe())

    def on_record(self, record: Record) -> None:
        if isinstance(record, NoteRecord):
            self._write(f"note {record.text}")


# -- the live view -----------------------------------------------------------


@dataclass
class HostState:
    """Read from sysfs when the view is redrawn (every couple of seconds, and
    after events), not on a timer of its own."""

    cpus: list[int] | None = None
    memory_blocks: int | None = None
    block_size: int | None = None
    kdump_loaded: bool | None = None
    kdump_since: float | None = None  # wall time we saw it change, None: before start
    crash_hotplug: dict[str, str | None] = field(default_factory=dict)
    read_at: float = 0.0

    def refresh(self) -> None:
        self.cpus = probes.cpus_online()
        self.memory_blocks = probes.memory_blocks_online()
        self.block_size = probes.block_size_bytes()
        loaded = probes.kexec_crash_loaded()
        if self.read_at and loaded != self.kdump_loaded:
            self.kdump_since = time.time()
        self.kdump_loaded = loaded
        self.crash_hotplug = {k: probes.crash_hotplug(k) for k in ("cpu", "memory")}
        self.read_at = time.monotonic()


def render_view(stage: CoalescerStage | None, stats: Stats, host: HostState, log: KexecCallLog, notes: list[str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rates = Table(title="events", expand=False)
    for col in ("kind", "action", "per s (5 s)", "total"):
        rates.add_column(col)
    for (kind, action), rate in sorted(stats.rates().items()):
        rates.add_row(kind, action, f"{rate:.1f}", str(stats.totals[(kind, action)]))

    state = Table(title="state", show_header=False, expand=False)
    state.add_column("what")
    state.add_column("value")
    open_batch = stage.open_batch() if stage is not None else None
    if open_batch is None:
        state.add_row("open batch", "none")
    else:
        b = open_batch.preview
        now = trio.current_time()
        parts = [f"#{open_batch.seq} {open_batch.events} events, age {now - open_batch.opened_at:.2f} s"]
        parts.append(f"closes in {max(0.0, open_batch.deadline - now):.2f} s ({open_batch.deadline_reason})")
        ranges = [f"{n}: {' '.join(map(str, rs))}" for n, rs in (("online", b.online), ("offline", b.offline), ("added", b.added), ("removed", b.removed)) if rs]
        cpus = [f"cpus {n}: {','.join(map(str, cs))}" for n, cs in (("online", b.cpus_online), ("offline", b.cpus_offline), ("added", b.cpus_added), ("removed", b.cpus_removed)) if cs]
        if open_batch.urgent:
            parts.append("urgent")
        if open_batch.rescan:
            parts.append("rescan")
        state.add_row("open batch", "\n".join([", ".join(parts), *ranges, *cpus]))
    last = stats.batches[-1].describe() if stats.batches else "none yet"
    state.add_row("last batch", last)
    state.add_row("CPUs online", _cpu_text(host.cpus))
    if host.memory_blocks is not None and host.block_size:
        state.add_row("memory online", f"{host.memory_blocks} blocks = {host.memory_blocks * host.block_size / (1 << 30):g} GiB")
    else:
        state.add_row("memory online", "unknown (no /sys/devices/system/memory)")
    if host.kdump_loaded is None:
        kdump = "kernel without kexec (no /sys/kernel/kexec_crash_loaded)"
    else:
        since = time.strftime("%H:%M:%S", time.localtime(host.kdump_since)) if host.kdump_since else "before trace started"
        kdump = f"{'loaded' if host.kdump_loaded else 'NOT loaded'} since {since}"
    state.add_row("kdump", kdump)
    state.add_row("crash_hotplug", ", ".join(f"{k}={v if v is not None else 'absent'}" for k, v in host.crash_hotplug.items()))
    calls = log.calls()
    if calls:
        c = calls[-1]
        ago = (time.monotonic_ns() - c.exit_ns) / 1e9
        state.add_row("last reload", f"{c.syscall} by {c.comm}[{c.pid}] {ago:.1f} s ago, window {c.window_s * 1000:.1f} ms, ret={c.ret}")
    else:
        state.add_row("last reload", "none seen" if log.active else "not traced (no kexec syscall events)")
    dups = stage.duplicates if stage is not None else 0
    state.add_row("drops", f"{stats.lost_reports} loss report(s), {stats.lost_known} events known lost; {dups} cross-source duplicates")
    header = Text("kdump-coalesce trace (loads nothing) - " + "; ".join(n for n in notes if not n.startswith("bpf: ")), style="bold")
    return Group(header, rates, state)


def _cpu_text(cpus: list[int] | None) -> str:
    if cpus is None:
        return "unknown"
    return f"{len(cpus)}: {','.join(map(str, cpus))}"


# -- running -----------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    kinds = frozenset({Kind(args.kind)}) if args.kind else frozenset(Kind)
    if args.dump_bpf:
        from .doctor import dump_bpf

        return dump_bpf(kinds)
    duration: float | None = None
    if args.duration is not None:
        from probes import parse_duration_ns

        try:
            duration = parse_duration_ns(args.duration) / 1e9
        except ValueError as exc:
            raise ConfigError("--duration", str(exc)) from exc
        if duration <= 0:
            raise ConfigError("--duration", "must be > 0")
    document, path = read_config(args, {"coalescer": Policy})
    policy = policy_from(args, document, path)
    plain = args.plain or not sys.stdout.isatty()
    log = KexecCallLog()
    selection = open_sources(args.source, kexec_log=log, kinds=kinds)
    writer: TraceWriter | None = None
    stats = Stats()
    observer = FanOut([stats])
    if plain:
        observer.add(PlainPrinter(sys.stdout))
        for note in selection.notes:
            print(f"note {note}", file=sys.stderr)
    if args.output:
        header = TraceHeader.for_this_host(selection.block_size or probes.block_size_bytes() or 128 << 20)
        try:
            writer = open_trace_for_writing(args.output, header)
        except OSError as exc:
            raise ConfigError(args.output, f"cannot write trace: {exc.strerror}") from exc
        for note in selection.notes:
            writer.observation(NoteRecord(note))
        observer.add(TraceObserver(writer, clock=trio.current_time))

    recorder = BatchRecorder()
    try:
        trio.run(_main, selection.sources, recorder, policy, observer, stats, log, selection.notes, plain, duration)
    finally:
        for source in selection.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        if writer is not None:
            writer.close()
    summary = f"{sum(stats.totals.values())} events, {len(recorder.batches)} batches, {stats.lost_reports} loss report(s)"
    print(f"kdump-coalesce trace: {summary}", file=sys.stderr)
    return EXIT_OK


async def _main(
    sources: list[Any],
    recorder: BatchRecorder,
    policy: Any,
    observer: FanOut,
    stats: Stats,
    log: KexecCallLog,
    notes: list[str],
    plain: bool,
    duration: float | None,
) -> None:
    watchers = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def pipeline(*, task_status: trio.TaskStatus[CoalescerStage]) -> None:
            try:
                await run_pipeline(sources, recorder, policy, observer, task_status=task_status)
            finally:
                # The sources stopped and the last batch is delivered: the
                # watchers (signals, timer, view) have nothing left to watch.
                watchers.cancel()

        stage: CoalescerStage = await nursery.start(pipeline)
        with watchers:
            async with trio.open_nursery() as inner:
                inner.start_soon(_signals, stage, nursery.cancel_scope)
                inner.start_soon(_kexec_calls, log, plain, observer)
                if duration is not None:
                    inner.start_soon(_stop_after, duration, stage)
                if not plain:
                    inner.start_soon(_live_view, stage, stats, log, notes)


async def _signals(stage: CoalescerStage, everything: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        seen = 0
        async for _ in signals:
            seen += 1
            if seen == 1:
                stage.stop_sources()  # flush the open batch, then end
            else:
                everything.cancel()


async def _stop_after(seconds: float, stage: CoalescerStage) -> None:
    await trio.sleep(seconds)
    stage.stop_sources()


async def _kexec_calls(log: KexecCallLog, plain: bool, observer: FanOut) -> None:
    """Print/record kexec calls as the BPF source logs them (woken by the
    log, no polling)."""
    seen = len(log.calls())
    while True:
        await log.wait_changed()
        calls = log.calls()
        # The log is bounded: once full, every append is one new call.
        for call in calls[seen:] if seen < len(calls) else calls[-1:]:
            # trace loads nothing itself: every call it sees is someone else's.
            observer.on_record(KexecCallRecord.of(call, external=True))
            if plain:
                print(kexec_line(call), flush=True)
        seen = len(calls)


async def _live_view(stage: CoalescerStage, stats: Stats, log: KexecCallLog, notes: list[str]) -> None:
    from rich.console import Console
    from rich.live import Live

    host = HostState()
    host.refresh()
    console = Console()
    # auto_refresh=False: rich would start a refresh thread; the view is
    # redrawn from this task instead, twice a second while something is
    # happening and every 2 s otherwise.
    with Live(render_view(stage, stats, host, log, notes), console=console, auto_refresh=False) as live:
        while True:
            busy = stage.open_batch() is not None or bool(stats.recent)
            await trio.sleep(0.5 if busy else 2.0)
            if busy or time.monotonic() - host.read_at > 2.0:
                host.refresh()
            live.update(render_view(stage, stats, host, log, notes), refresh=True)
