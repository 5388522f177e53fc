"""Metrics: the exposition parsed back with prometheus_client's parser, the
atomic textfile, the loopback-only endpoint."""

from __future__ import annotations

import math
import os
import stat
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ground.records import DaemonStatus, ErrorRecord, KexecCallRecord, ReloadRecord, ReloadResult, WindowKind
from tests.fixtures.doubles import updater_status
from coalescer import BatchBuilder, Policy
from ground.observer import FanOut
from ground.records import Batch
from kdump_coalesce._log import LogObserver
from kdump_coalesce._metrics import (
    MetricsObserver,
    MetricsServer,
    MetricsSettings,
    TextfileWriter,
    parse_listen,
    write_textfile,
)
from tests.fixtures.doubles import NullUpdater
from kdump_coalesce.daemon import Daemon
from ground.errors import ConfigError
from kdump_coalesce.ops import ServiceSettings, attach
from probes import open_sources
from ground.events import Action, EventsLost, HotplugEvent, Kind

MIB = 1 << 20


def parse(text: bytes | str) -> dict[str, list[Sample]]:
    """family name -> samples, through the Prometheus text parser."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = list(family.samples)
        assert family.type in ("counter", "gauge", "histogram"), family
    return out


def value(families: dict[str, list[Sample]], sample_name: str, **labels: str) -> float:
    for samples in families.values():
        for s in samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{sample_name}{labels}")


def _batch(seq: int = 1) -> Batch:
    b = BatchBuilder(seq=seq)
    for i in range(8):
        b.fold(HotplugEvent(Kind.MEMORY, Action.ONLINE, i, "bpf", start=(4096 + i * 128) * MIB, size=128 * MIB))
    return b.build("quiet", 10.0, 11.5)


def _feed(m: MetricsObserver) -> None:
    for i in range(8):
        m.on_item(HotplugEvent(Kind.MEMORY, Action.ONLINE, i, "bpf", start=(4096 + i * 128) * MIB, size=128 * MIB))
    m.on_item(HotplugEvent(Kind.CPU, Action.OFFLINE, 9, "uevent", cpu=1))
    m.on_item(EventsLost(10, "uevent", count=5, reason="ENOBUFS"))
    m.on_item(EventsLost(11, "bpf"))
    m.on_batch(_batch())
    m.on_record(DaemonStatus("ready", updater_status("kexec", kdump_correct=True)))
    m.on_record(ReloadRecord(backend="kexec", result=ReloadResult.OK, reason="batch 1", batch=1, kdump_correct=True, wall_s=0.8,
                             window_s=0.3, window_kind=WindowKind.BPF, window_source="bpf: kexec_load", ranges=4, cpus=(0, 1), ram_bytes=5 << 30))
    m.on_record(ReloadRecord(backend="kexec", result=ReloadResult.FAILED, reason="boom", batch=2, kdump_correct=False, wall_s=2.0,
                             window_s=1.5, window_kind=WindowKind.LOADER_LIFETIME, window_source="bounded by the loader's lifetime"))
    m.on_record(ReloadRecord(backend="kexec", result=ReloadResult.SKIPPED, reason="header unchanged", batch=3, kdump_correct=False, wall_s=0.001))
    m.on_record(ErrorRecord(stage="updater", message="boom"))
    m.on_record(KexecCallRecord(external=True, syscall="kexec_load", pid=77, comm="kexec", flags=1, ret=0, window_s=0.2))
    m.on_record(KexecCallRecord(external=False, syscall="kexec_load", pid=78, comm="python3", flags=1, ret=0, window_s=0.2))


def test_exposition_parses_and_counts(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    m = MetricsObserver(sysfs_root=str(tmp_path))
    _feed(m)
    f = parse(m.render())
    assert value(f, "kdump_coalesce_events_total", kind="memory", action="online", source="bpf") == 8
    assert value(f, "kdump_coalesce_events_total", kind="cpu", action="offline", source="uevent") == 1
    assert value(f, "kdump_coalesce_events_lost_total", source="uevent") == 5
    assert value(f, "kdump_coalesce_events_lost_total", source="bpf") == 1
    assert value(f, "kdump_coalesce_batches_total", reason="quiet") == 1
    assert value(f, "kdump_coalesce_batch_events_sum") == 8
    assert value(f, "kdump_coalesce_batch_events_bucket", le="5.0") == 0
    assert value(f, "kdump_coalesce_batch_events_bucket", le="10.0") == 1
    assert value(f, "kdump_coalesce_batch_delay_seconds_sum") == pytest.approx(1.5)
    assert value(f, "kdump_coalesce_reloads_total", backend="kexec", result="ok") == 1
    assert value(f, "kdump_coalesce_reloads_total", backend="kexec", result="failed") == 1
    assert value(f, "kdump_coalesce_reloads_total", backend="kexec", result="skipped") == 1
    # skipped reloads are not durations, and nothing was loaded for them
    assert value(f, "kdump_coalesce_reload_duration_seconds_count") == 2
    assert value(f, "kdump_coalesce_reload_duration_seconds_sum") == pytest.approx(2.8)
    assert value(f, "kdump_coalesce_reload_duration_seconds_bucket", le="1.0") == 1
    assert value(f, "kdump_coalesce_reload_window_seconds_count") == 2
    assert value(f, "kdump_coalesce_reload_window_seconds_sum") == pytest.approx(1.8)
    assert value(f, "kdump_coalesce_reload_window_estimated_total") == 1
    assert value(f, "kdump_coalesce_last_reload_success") == 0  # the failed one came last
    assert value(f, "kdump_coalesce_kdump_correct") == 0
    assert value(f, "kdump_coalesce_header_ranges") == 4
    assert value(f, "kdump_coalesce_header_cpus") == 2
    assert value(f, "kdump_coalesce_header_ram_bytes") == 5 << 30
    assert value(f, "kdump_coalesce_errors_total", stage="updater") == 1
    assert value(f, "kdump_coalesce_external_kexec_calls_total") == 1
    assert value(f, "kdump_coalesce_ready") == 1
    assert value(f, "kdump_coalesce_mode", mode="kexec") == 1
    assert sum(s.value for s in f["kdump_coalesce_mode"]) == 1  # one-hot
    assert value(f, "kdump_coalesce_kdump_loaded") == 1
    assert math.isnan(value(f, "kdump_coalesce_kernel_crash_hotplug", kind="memory"))  # no such file: unknown, not 0


def test_naming_conventions() -> None:
    m = MetricsObserver()
    _feed(m)
    text = m.render().decode()
    f = parse(text)
    assert f and all(name.startswith("kdump_coalesce_") for name in f)
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_events")), family.name
        for s in family.samples:
            # never one series per block, address or CPU
            assert not {"block", "start", "address", "cpu", "range"} & set(s.labels), s
    assert "_created" not in text


def test_unknown_is_nan_not_zero(tmp_path: Path) -> None:
    f = parse(MetricsObserver(sysfs_root=str(tmp_path)).render())
    for name in ("kdump_coalesce_kdump_loaded", "kdump_coalesce_kdump_correct", "kdump_coalesce_last_reload_success", "kdump_coalesce_header_ranges"):
        assert math.isnan(value(f, name)), name


def test_mode_follows_the_backend() -> None:
    m = MetricsObserver()
    m.on_record(DaemonStatus("ready", updater_status("kernel")))
    assert value(parse(m.render()), "kdump_coalesce_mode", mode="kernel") == 1
    m.on_record(ReloadRecord(backend="kexec", result=ReloadResult.FALLBACK, reason="crash_hotplug reads 0", batch=1, kdump_correct=True,
                             wall_s=1.0, window_s=0.5, window_kind=WindowKind.BPF, window_source="bpf"))
    f = parse(m.render())
    assert value(f, "kdump_coalesce_mode", mode="kexec") == 1 and value(f, "kdump_coalesce_mode", mode="kernel") == 0


def test_distro_rule_gauge() -> None:
    m = MetricsObserver()
    m.set_distro_rules({"50-kdump-tools.rules": True, "98-kexec.rules": False})
    f = parse(m.render())
    assert value(f, "kdump_coalesce_distro_rule_active", rule="50-kdump-tools.rules") == 1
    assert value(f, "kdump_coalesce_distro_rule_active", rule="98-kexec.rules") == 0


def test_write_textfile_is_atomic_and_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "kdump-coalesce.prom"
    path.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        write_textfile(str(path), b"# HELP x y\n")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"# HELP x y\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as its own user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdump-coalesce.prom"]  # no temporary left


def test_write_textfile_failure_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "kdump-coalesce.prom"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_textfile(str(path), "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdump-coalesce.prom"]


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def test_textfile_writer_follows_changes(tmp_path: Path) -> None:
    # Real clock: the write runs in a worker thread, which a mock clock would
    # jump past.
    m = MetricsObserver()
    path = tmp_path / "k.prom"
    warnings: list[str] = []
    writer = TextfileWriter(m, str(path), interval=3600.0, warn=warnings.append, min_gap=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await _until(lambda: writer.writes == 1)
        assert 'kdump_coalesce_batches_total{reason="quiet"}' not in path.read_text()
        await trio.sleep(0.2)
        assert writer.writes == 1  # nothing changed: no rewrite before the interval
        m.on_batch(_batch())
        await _until(lambda: writer.writes == 2)
        assert value(parse(path.read_text()), "kdump_coalesce_batches_total", reason="quiet") == 1
        nursery.cancel_scope.cancel()
    assert warnings == []


async def test_textfile_writer_rewrites_every_interval(tmp_path: Path) -> None:
    m = MetricsObserver()
    writer = TextfileWriter(m, str(tmp_path / "k.prom"), interval=0.05, warn=lambda _: None, min_gap=0.01)
    with trio.move_on_after(1.0):
        await writer.run()
    assert 3 <= writer.writes <= 1.0 / 0.05 + 1  # periodic, and not spinning


async def test_textfile_writer_missing_directory_warns_once(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    m = MetricsObserver()
    warnings: list[str] = []
    writer = TextfileWriter(m, str(tmp_path / "absent" / "k.prom"), interval=1.0, warn=warnings.append)
    with trio.move_on_after(10):
        await writer.run()
    assert len(warnings) == 1 and "does not exist" in warnings[0]
    assert value(parse(m.render()), "kdump_coalesce_metrics_write_failures_total") >= 5
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("text,expected", [
    ("9466", ("127.0.0.1", 9466)),
    ("127.0.0.1:9466", ("127.0.0.1", 9466)),
    ("localhost:1", ("127.0.0.1", 1)),
    ("[::1]:9466", ("::1", 9466)),
    ("127.0.0.2:80", ("127.0.0.2", 80)),
    ("", None),
])
def test_parse_listen(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["0.0.0.0:9466", "10.0.0.1:9466", "[::]:9466", "example.com:80", "127.0.0.1:0", "127.0.0.1:x", "70000"])
def test_parse_listen_refuses_non_loopback_and_junk(text: str) -> None:
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        parse_listen(text)


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="must end in .prom"):
        MetricsSettings(textfile="/var/lib/x.txt")
    with pytest.raises(ConfigError, match="absolute"):
        MetricsSettings(textfile="x.prom")
    with pytest.raises(ConfigError, match="loopback"):
        MetricsSettings(listen="0.0.0.0:9466")
    MetricsSettings(textfile="")  # disabled is fine


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    m = MetricsObserver()
    _feed(m)
    srv = MetricsServer(m, "127.0.0.1", 0)
    yield srv
    srv.close()


def test_http_endpoint_on_loopback(server: MetricsServer) -> None:
    assert server.server.server_address[0] == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
        body = resp.read()
    assert value(parse(body), "kdump_coalesce_reloads_total", backend="kexec", result="ok") == 1


def test_http_endpoint_on_ipv6_loopback() -> None:
    """``listen = "[::1]:PORT"`` binds an AF_INET6 socket (the server is ours,
    not prometheus_client's, which picks the family itself)."""
    address, _ = parse_listen("[::1]:9466") or ("", 0)
    m = MetricsObserver()
    _feed(m)
    srv = MetricsServer(m, address, 0)
    try:
        assert srv.server.server_address[0] == "::1"
        with urllib.request.urlopen(f"http://[::1]:{srv.port}/metrics", timeout=10) as resp:
            body = resp.read()
    finally:
        srv.close()
    assert value(parse(body), "kdump_coalesce_reloads_total", backend="kexec", result="ok") == 1
    assert not srv.thread.is_alive()


async def test_daemon_with_ops_writes_the_textfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ops.attach`` on a real daemon run: the textfile holds the batch, and
    the last write (after the daemon stopped) says ready=0."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    rules = tmp_path / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "50-kdump-tools.rules").write_text('SUBSYSTEM=="cpu", ACTION=="online", PROGRAM="/usr/sbin/kdump-config try-reload"\n')
    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> int:
            lines.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    log = LogObserver(Sink(), fmt="text")  # type: ignore[arg-type]
    selection = open_sources("scenario:cpu:2:4")
    daemon = Daemon(Policy(quiet=0.05, max_delay=1.0), selection.sources, NullUpdater("test"), FanOut([log]), log)
    prom = tmp_path / "kdump-coalesce.prom"
    attach(daemon, {"metrics": MetricsSettings(textfile=str(prom)), "service": ServiceSettings(rules_root=str(tmp_path))})
    await daemon.run()
    f = parse(prom.read_text())
    assert value(f, "kdump_coalesce_events_total", kind="cpu", action="online", source="scenario") == 2
    assert value(f, "kdump_coalesce_batches_total", reason="eof") == 1
    assert value(f, "kdump_coalesce_ready") == 0
    assert value(f, "kdump_coalesce_mode", mode="none") == 1
    assert value(f, "kdump_coalesce_distro_rule_active", rule="50-kdump-tools.rules") == 1
    warning = [line for line in lines if line.startswith("<4>") and "50-kdump-tools.rules" in line]
    assert len(warning) == 1 and "reloaded twice" in warning[0]
