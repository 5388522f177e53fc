"""Prometheus metrics: a node_exporter textfile and an optional loopback HTTP endpoint.

Everything is in one private :class:`prometheus_client.CollectorRegistry`, fed
by :class:`MetricsObserver` (an observer of every stage).  Names follow the
Prometheus conventions: the ``kdump_coalesce_`` prefix, ``_total`` on counters,
base units (``_seconds``, ``_bytes``), and labels with small fixed value sets
only (event kind/action/source, batch close reason, backend, result): never a
memory block, an address or a CPU number, which would make one series per
block of a 3840-block resize.

Two ways out:

- the textfile (``[metrics] textfile``): rewritten atomically (a temporary
  file in the same directory, then rename(2), so node_exporter never reads a
  half-written file) at most every ``MIN_WRITE_GAP_S`` while things happen
  and at least every ``textfile-interval`` seconds, so that node_exporter's
  ``node_textfile_mtime_seconds`` doubles as a liveness signal.  The write runs
  in a worker thread: a stalled disk must not stall the pipeline.
- the HTTP endpoint (``[metrics] listen``): prometheus_client's WSGI app in a
  threading wsgiref server of our own (see :class:`MetricsServer`), bound to
  a loopback address only (the metrics say which machines are being resized
  and when; exposing them is the operator's call, through a proxy).

A metrics failure never stops the daemon: kdump correctness comes first.  It
is logged once and counted in ``kdump_coalesce_metrics_write_failures_total``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client.metrics
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ground.records import Batch, DaemonStatus, ErrorRecord, KexecCallRecord, Record, ReloadRecord, ReloadResult
from ground.events import EventsLost, HotplugEvent, SourceItem
from probes import KERNEL_UPDATE_CAUSES, KMSG_SOURCE_PREFIX

from . import __version__
from ground.config import option
from ground.errors import ConfigError
from ground.files import atomic_write

PREFIX = "kdump_coalesce"
DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/kdump-coalesce.prom"
MIN_WRITE_GAP_S = 0.5
# The backends the updater can run (updater._config.BACKENDS minus auto) and
# "none" when this build has no updater: the one-hot ``mode`` gauge lists all
# of them so a dashboard sees a 0 -> 1 flip, not a series appearing.
MODES = ("kernel", "kexec-fast", "kexec", "dry-run", "none")
RELOAD_RESULTS = ("ok", "fallback", "failed", "skipped")
# Why kernel mode repaired: a removal the kernel's header still lists, or a
# skipped in-kernel update the kernel log reported (probes/_kmsg.py).
REPAIR_CAUSES = ("removal", *KERNEL_UPDATE_CAUSES)

# Reload wall time: ~0.17 s (kexec -i -p under TCG) to a few seconds (kexec -s
# -p hashing a big initrd); window the same or less.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A 480 GiB resize in 128 MiB blocks is 3840 events in one batch.
BATCH_EVENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# First event -> close: bounded by max_delay (30 s by default).
BATCH_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)

LOOPBACK_NAMES = ("localhost",)


def parse_listen(value: str) -> tuple[str, int] | None:
    """``[metrics] listen`` -> (address, port); "" is off.  Accepts ``PORT``,
    ``127.0.0.1:PORT``, ``[::1]:PORT``, ``localhost:PORT``; anything that is
    not a loopback address is refused."""
    value = value.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError("[metrics] listen", f"expected PORT or 127.0.0.1:PORT, got {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError("[metrics] listen", f"port out of range: {port}")
    if host in LOOPBACK_NAMES:
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError("[metrics] listen", f"not an IP address: {host!r}") from None
    if not address.is_loopback:
        raise ConfigError(
            "[metrics] listen",
            f"{host} is not a loopback address: the endpoint binds to 127.0.0.1 or ::1 only "
            "(scrape it through a local proxy, or use the textfile with node_exporter)",
        )
    return str(address), port


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    textfile: str = option(
        DEFAULT_TEXTFILE,
        cli=True,
        help="Prometheus textfile for node_exporter's textfile collector, written atomically ('' disables; "
        "skipped with a warning when its directory does not exist)",
    )
    textfile_interval: float = option(15.0, help="rewrite the textfile at least this often (seconds), even when nothing happens")
    listen: str = option("", cli=True, help="serve /metrics over HTTP on PORT or 127.0.0.1:PORT (loopback only; '' disables)")

    def __post_init__(self) -> None:
        if self.textfile and not self.textfile.endswith(".prom"):
            raise ConfigError("[metrics] textfile", f"must end in .prom (node_exporter reads *.prom only), got {self.textfile!r}")
        if self.textfile and not os.path.isabs(self.textfile):
            raise ConfigError("[metrics] textfile", f"must be an absolute path, got {self.textfile!r}")
        if not self.textfile_interval > 0:
            raise ConfigError("[metrics] textfile-interval", "must be > 0")
        parse_listen(self.listen)


def _read_flag(path: str) -> float:
    """A sysfs 0/1 file as a gauge value; NaN when it cannot be read (this
    kernel has no kexec, or no permission): unknown is not "no"."""
    try:
        with open(path) as f:
            return 1.0 if int(f.read().strip() or "0") else 0.0
    except (OSError, ValueError):
        return math.nan


class KernelStateCollector(Collector):
    """Read at every scrape/write from sysfs, not from what the daemon believes."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            f"{PREFIX}_kdump_loaded",
            "1 when a crash kernel is loaded (/sys/kernel/kexec_crash_loaded), NaN when unknown",
            value=_read_flag(os.path.join(self.root, "sys/kernel/kexec_crash_loaded")),
        )
        hotplug = GaugeMetricFamily(
            f"{PREFIX}_kernel_crash_hotplug",
            "1 when the kernel rewrites the elfcorehdr itself (/sys/devices/system/KIND/crash_hotplug), NaN when unknown",
            labels=["kind"],
        )
        for kind in ("cpu", "memory"):
            hotplug.add_metric([kind], _read_flag(os.path.join(self.root, f"sys/devices/system/{kind}/crash_hotplug")))
        yield hotplug

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def _disable_created_metrics() -> None:
    """No ``*_created`` series, in every prometheus_client the package supports.

    ``disable_created_metrics()`` exists since 0.17.  Before it (Debian
    bookworm: 0.16) the same switch is the module global it sets,
    ``prometheus_client.metrics._use_created``, otherwise read once from
    PROMETHEUS_DISABLE_CREATED_SERIES at import time, which is too early for
    a daemon that decides in code.
    """
    disable = getattr(prometheus_client, "disable_created_metrics", None)
    if disable is not None:
        disable()
    else:
        setattr(prometheus_client.metrics, "_use_created", False)


class MetricsObserver:
    """Turns items, batches and records into metrics."""

    def __init__(self, *, sysfs_root: str = "/", clock: Callable[[], float] = time.time) -> None:
        # No ``*_created`` series: the textfile is rewritten every few seconds
        # and those would double its size for nothing an alert uses.  (A
        # process-wide switch in prometheus_client; this process is the daemon.)
        _disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.changed: trio.Event | None = None  # set by TextfileWriter.run
        self._generation = 0
        r = self.registry
        p = PREFIX
        self.build_info = Gauge(f"{p}_build_info", "kdump-coalesce version (always 1)", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.start_time = Gauge(f"{p}_start_time_seconds", "Unix time the daemon started", registry=r)
        self.start_time.set(clock())
        self.ready = Gauge(f"{p}_ready", "1 once probes are attached and kdump reconciled; 0 while starting or stopping", registry=r)
        self.mode = Gauge(f"{p}_mode", "The backend that keeps the elfcorehdr current (one-hot)", ["mode"], registry=r)
        for mode in MODES:
            self.mode.labels(mode).set(0)
        self.events = Counter(f"{p}_events", "Hotplug events accepted by the coalescer", ["kind", "action", "source"], registry=r)
        self.events_lost = Counter(f"{p}_events_lost", "Events a source reports lost (each forces a full rescan)", ["source"], registry=r)
        self.batches = Counter(f"{p}_batches", "Batches closed, by why they closed", ["reason"], registry=r)
        self.batch_events = Histogram(f"{p}_batch_events", "Events per closed batch", buckets=BATCH_EVENT_BUCKETS, registry=r)
        self.batch_delay = Histogram(
            f"{p}_batch_delay_seconds", "From a batch's first event to its close", buckets=BATCH_DELAY_BUCKETS, registry=r
        )
        self.last_batch = Gauge(f"{p}_last_batch_timestamp_seconds", "Unix time the last batch closed", registry=r)
        self.reloads = Counter(f"{p}_reloads", "Reload decisions by backend and result (ok, fallback, failed, skipped)", ["backend", "result"], registry=r)
        self.reload_duration = Histogram(
            f"{p}_reload_duration_seconds", "Wall time of a reload (snapshot, build, load); skipped ones excluded",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.reload_window = Histogram(
            f"{p}_reload_window_seconds", "Time with no usable crash kernel during a reload (the kexec syscall or its bound)",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.window_bounds = Counter(
            f"{p}_reload_window_estimated", "Reloads whose window is an upper bound (loader lifetime), not measured by BPF", registry=r
        )
        self.last_reload = Gauge(f"{p}_last_reload_timestamp_seconds", "Unix time of the last reload attempt (not skipped)", registry=r)
        self.last_reload_ok = Gauge(f"{p}_last_reload_success", "1 when the last reload attempt succeeded, 0 when it failed", registry=r)
        self.last_reload_ok.set(math.nan)
        self.header_ranges = Gauge(f"{p}_header_ranges", "System RAM PT_LOAD ranges in the loaded elfcorehdr", registry=r)
        self.header_cpus = Gauge(f"{p}_header_cpus", "CPU crash notes in the loaded elfcorehdr", registry=r)
        self.header_ram = Gauge(f"{p}_header_ram_bytes", "Bytes of RAM the loaded elfcorehdr covers", registry=r)
        for g in (self.header_ranges, self.header_cpus, self.header_ram):
            g.set(math.nan)
        self.kdump_correct = Gauge(
            f"{p}_kdump_correct", "1 when the loaded header is known to match the live state, 0 when known not to, NaN when unknown", registry=r
        )
        self.kdump_correct.set(math.nan)
        self.errors = Counter(f"{p}_errors", "Errors reported by a stage (a failed reload is one)", ["stage"], registry=r)
        self.external_kexec = Counter(
            f"{p}_external_kexec_calls", "kexec syscalls made by someone else (distro udev rule, admin), seen by the BPF probes", registry=r
        )
        self.distro_rule = Gauge(
            f"{p}_distro_rule_active", "1 when a distro udev rule that reloads kdump per event is active (double reloads)", ["rule"], registry=r
        )
        self.kernel_skipped = Counter(
            f"{p}_kernel_updates_skipped",
            "In-kernel elfcorehdr updates the kernel log says were skipped (trylock: kexec_trylock() failed; elfsz: "
            "header larger than its segment; update-failed; overrun: log records lost, one may have been missed)",
            ["cause"], registry=r,
        )
        self.repairs = Counter(
            f"{p}_kernel_repairs",
            "Loads kernel mode made to fix the kernel's header (one per repair and cause), keeping the kernel's hotplug support",
            ["cause"], registry=r,
        )
        self.hand_overs = Counter(
            f"{p}_hand_overs", "Loads that hand the elfcorehdr to the kernel (KEXEC_UPDATE_ELFCOREHDR), by reload result", ["result"], registry=r
        )
        for cause in KERNEL_UPDATE_CAUSES:
            self.kernel_skipped.labels(cause).inc(0)
        for cause in REPAIR_CAUSES:
            self.repairs.labels(cause).inc(0)
        for result in RELOAD_RESULTS:
            self.hand_overs.labels(result).inc(0)
        self.write_failures = Counter(f"{p}_metrics_write_failures", "Failed textfile writes", registry=r)
        r.register(KernelStateCollector(sysfs_root))

    # -- change notification ----------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def _touch(self) -> None:
        self._generation += 1
        if self.changed is not None:
            self.changed.set()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- Observer ----------------------------------------------------------------

    def on_item(self, item: SourceItem) -> None:
        if isinstance(item, EventsLost):
            self.events_lost.labels(item.source).inc(item.count if item.count is not None else 1)
            if item.source.startswith(KMSG_SOURCE_PREFIX):
                self.kernel_skipped.labels(item.source.removeprefix(KMSG_SOURCE_PREFIX)).inc(item.count or 1)
        elif isinstance(item, HotplugEvent):
            self.events.labels(str(item.kind), str(item.action), item.source).inc()
        self._touch()

    def on_batch(self, batch: Batch) -> None:
        self.batches.labels(batch.reason).inc()
        self.batch_events.observe(batch.events)
        self.batch_delay.observe(max(batch.closed_at - batch.opened_at, 0.0))
        self.last_batch.set(self.clock())
        self._touch()

    def on_record(self, record: Record) -> None:
        if isinstance(record, ReloadRecord):
            self._on_reload(record)
        elif isinstance(record, DaemonStatus):
            if record.state == "ready":
                self.ready.set(1)
            elif record.state == "stopping":
                self.ready.set(0)
            self._set_mode(record.updater.backend)
            self._set_correct(record.updater.kdump_correct)
        elif isinstance(record, ErrorRecord):
            self.errors.labels(record.stage).inc()
        elif isinstance(record, KexecCallRecord) and record.external:
            self.external_kexec.inc()
        else:
            return
        self._touch()

    def _set_mode(self, backend: str) -> None:
        if not backend:
            return
        for mode in {*MODES, backend}:
            self.mode.labels(mode).set(1 if mode == backend else 0)

    def _set_correct(self, correct: bool | None) -> None:
        # What the updater computed (ground.records.kdump_correct), never re-derived here.
        self.kdump_correct.set(math.nan if correct is None else float(correct))

    def _on_reload(self, record: ReloadRecord) -> None:
        result = record.result
        self.reloads.labels(record.backend, result.value).inc()
        if record.purpose == "hand-over":
            self.hand_overs.labels(result.value).inc()
        elif record.purpose == "repair" and result.loaded:
            for cause in record.repair_causes:
                self.repairs.labels(cause).inc()
        self._set_mode(record.backend)
        self._set_correct(record.kdump_correct)
        if result is not ReloadResult.SKIPPED:
            self.reload_duration.observe(record.wall_s)
            self.last_reload.set(self.clock())
            self.last_reload_ok.set(0 if result is ReloadResult.FAILED else 1)
        if record.loaded_something:
            self.reload_window.observe(record.window_s)
            if not record.window_exact:
                self.window_bounds.inc()
        if result.loaded:
            if record.ranges is not None:
                self.header_ranges.set(record.ranges)
            if record.cpus is not None:
                self.header_cpus.set(len(record.cpus))
            if record.ram_bytes is not None:
                self.header_ram.set(record.ram_bytes)

    def set_distro_rules(self, active: Mapping[str, bool]) -> None:
        for rule, on in active.items():
            self.distro_rule.labels(rule).set(1 if on else 0)
        self._touch()


def write_textfile(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0644 (node_exporter runs as
    its own user and must read it).  The temporary name does not end in
    ``.prom``, so the collector never picks it up; the directory must exist
    (its absence is reported, not papered over)."""
    atomic_write(path, data, mode=0o644, make_parents=False)


class TextfileWriter:
    """Keeps the ``.prom`` file current; see the module docstring."""

    def __init__(
        self, metrics: MetricsObserver, path: str, interval: float, *, warn: Callable[[str], None], min_gap: float = MIN_WRITE_GAP_S
    ) -> None:
        self.metrics = metrics
        self.path = path
        self.interval = interval
        self.min_gap = min_gap
        self.warn = warn
        self.writes = 0
        self._warned: str | None = None

    def _failed(self, message: str) -> None:
        self.metrics.write_failures.inc()
        if message != self._warned:
            self.warn(message)
            self._warned = message

    def _check_dir(self) -> bool:
        directory = os.path.dirname(self.path)
        if os.path.isdir(directory):
            return True
        self._failed(f"metrics textfile {self.path}: directory {directory} does not exist (install node_exporter or set [metrics] textfile)")
        return False

    async def write(self) -> None:
        if not self._check_dir():
            return
        data = self.metrics.render()
        try:
            await trio.to_thread.run_sync(write_textfile, self.path, data)
        except OSError as exc:
            self._failed(f"metrics textfile {self.path}: cannot write: {exc.strerror or exc}")
            return
        self.writes += 1
        self._warned = None

    def write_now(self) -> None:
        """Synchronous last write (the daemon is stopping, the tasks are gone)."""
        if not self._check_dir():
            return
        try:
            write_textfile(self.path, self.metrics.render())
        except OSError as exc:
            self._failed(f"metrics textfile {self.path}: cannot write: {exc.strerror or exc}")
            return
        self.writes += 1

    async def run(self) -> None:
        metrics = self.metrics
        while True:
            seen = metrics.generation
            await self.write()
            changed = metrics.changed = trio.Event()
            if metrics.generation == seen:  # nothing happened while writing
                with trio.move_on_after(self.interval):
                    await changed.wait()
            # A burst of events: one write per gap, not one per event.
            await trio.sleep(self.min_gap)


class _QuietRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would end up in the journal every 15 s


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper must not hold up the daemon's exit


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """prometheus_client's WSGI app, served on a loopback address from a daemon thread.

    The server is built here rather than taken from prometheus_client's
    ``start_http_server``, which returns the (server, thread) pair needed to
    shut it down only since 0.20; Debian bookworm ships 0.16, where it returns
    nothing.  ``make_wsgi_app`` is the same in every version the package
    supports.
    """

    def __init__(self, metrics: MetricsObserver, address: str, port: int) -> None:
        self.address = address
        server_class = _ThreadingWSGIServer6 if ipaddress.ip_address(address).version == 6 else _ThreadingWSGIServer
        self.server = make_server(address, port, make_wsgi_app(metrics.registry), server_class, handler_class=_QuietRequestHandler)
        self.port: int = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
