"""Operations: what makes the daemon a service an operator can run and watch.

Plugged into ``kdump-coalesce run`` through two names:

- :data:`SECTIONS`: the config sections this layer adds (``[metrics]``,
  ``[service]``); their flagged fields become ``run`` options;
- :func:`attach`: adds the observers and background tasks to a
  :class:`~kdump_coalesce.daemon.Daemon` before it runs.

What it attaches:

- sd_notify (:mod:`._notify`): READY=1, STATUS=, WATCHDOG=1, STOPPING=1 when
  ``$NOTIFY_SOCKET`` is set (systemd's ``Type=notify``);
- Prometheus metrics (:mod:`._metrics`): the node_exporter textfile and the
  optional loopback HTTP endpoint;
- the stages' Python ``logging`` records routed through the daemon's log
  (syslog priority prefixes, ``--log-format json``) while it runs;
- a watch on the distro's reload-per-event udev rule (:mod:`._distro_rules`):
  when one is still active, every burst is reloaded twice; the daemon says so
  (warning priority) and in ``kdump_coalesce_distro_rule_active``.  The
  verdict waits for READY=1 plus a grace period: the Debian package's unit
  masks the rule in ExecStartPost=, which systemd runs only after READY=1, so
  a check at start would always find it active.  After that the rule is read
  again every minute (a kdump-tools upgrade, an administrator's edit).

None of these can stop the daemon: a metrics or notify failure is logged and
the daemon goes on keeping kdump current.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ground.records import Batch, DaemonStatus, Record
from ground.events import SourceItem

import trio

from ._distro_rules import DistroRule, RuleState, distro_rules
from ._log import ERR, INFO, WARNING, bridge_logging
from ._metrics import MetricsServer, MetricsSettings, MetricsObserver, TextfileWriter, parse_listen
from ._notify import Notifier, NotifyObserver, watchdog_task
from ground.config import option
from .daemon import Daemon


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    notify: bool = option(True, help="speak sd_notify to systemd when $NOTIFY_SOCKET is set (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)")
    check_distro_rules: bool = option(True, help="warn, once the daemon is ready and then whenever it changes, when a distro udev rule still reloads kdump on every event")
    rules_root: str = option("/", help="look for udev rules under this directory (tests)")
    sysfs_root: str = option("/", help="read kexec_crash_loaded and crash_hotplug for the metrics under this directory (tests)")


SECTIONS: dict[str, type] = {"metrics": MetricsSettings, "service": ServiceSettings}


# After READY=1, how long the unit's ExecStartPost= take-over may take to
# mask the rule before the daemon calls it active (a Python start and a udev
# reload: about a second on a host, several under TCG), and how often it is
# read afterwards.
DISTRO_RULE_GRACE_S = 30.0
DISTRO_RULE_POLL_S = 1.0
DISTRO_RULE_RECHECK_S = 60.0


def _double_reload_warning(rule: DistroRule, state: RuleState) -> str:
    return (
        f"distro udev rule /{state.effective} ({rule.package}) is active: it reloads kdump on every event "
        "as well, so every burst is reloaded twice; mask it with 'kdump-coalesce install-service'"
    )


class DistroRuleWatch:
    """The distro rules' state in the metrics, and a warning while one is active.

    The metric is set at once; the first verdict waits for the daemon's
    ``ready`` record and up to ``grace_s`` more for the take-over to mask the
    rule (or, when the daemon stops sooner, is given at ``stopping``).  Later
    reads log only changes."""

    def __init__(
        self,
        root: str,
        metrics: MetricsObserver,
        log: Callable[..., None],
        *,
        grace_s: float = DISTRO_RULE_GRACE_S,
        poll_s: float = DISTRO_RULE_POLL_S,
        recheck_s: float = DISTRO_RULE_RECHECK_S,
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.log = log
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.ready = trio.Event()
        self.judged = False
        self.seen: set[str] = set()  # every rule name the metric has a label for
        self.active_at_start = self.read()
        self.active: dict[str, tuple[DistroRule, RuleState]] = dict(self.active_at_start)

    def read(self) -> dict[str, tuple[DistroRule, RuleState]]:
        """The active rules now; the metric follows (0 for a rule gone since)."""
        present = distro_rules(self.root)
        self.seen.update(rule.name for rule, _ in present)
        on = {rule.name for rule, state in present if state.active}
        self.metrics.set_distro_rules({name: name in on for name in sorted(self.seen)})
        return {rule.name: (rule, state) for rule, state in present if state.active}

    def judge(self) -> None:
        """The first verdict: a warning per rule still active, a note per rule masked since start."""
        if self.judged:
            return
        self.judged = True
        self.active = self.read()
        for name, (rule, state) in self.active.items():
            self.log(WARNING, _double_reload_warning(rule, state), rule=name)
        for name in sorted(set(self.active_at_start) - set(self.active)):
            self.log(INFO, f"distro udev rule {name} was active at start and is masked now", rule=name)

    async def run(self) -> None:
        await self.ready.wait()
        deadline = trio.current_time() + self.grace_s
        while self.read() and trio.current_time() < deadline:
            await trio.sleep(self.poll_s)
        self.judge()
        while True:
            await trio.sleep(self.recheck_s)
            now = self.read()
            for name in sorted(set(now) - set(self.active)):
                rule, state = now[name]
                self.log(WARNING, _double_reload_warning(rule, state), rule=name)
            for name in sorted(set(self.active) - set(now)):
                self.log(INFO, f"distro udev rule {name} is no longer active", rule=name)
            self.active = now

    def on_item(self, item: SourceItem) -> None:
        return None

    def on_batch(self, batch: Batch) -> None:
        return None

    def on_record(self, record: Record) -> None:
        if not isinstance(record, DaemonStatus):
            return
        if record.state == "ready":
            self.ready.set()
        elif record.state == "stopping":
            self.judge()  # a daemon that ends within the grace still says whether the rule ran beside it


class _OnStopping:
    """Last metrics write and endpoint shutdown when the daemon stops (its
    background tasks are cancelled by then)."""

    def __init__(self, writer: TextfileWriter | None, server: MetricsServer | None, undo_logging: Callable[[], None]) -> None:
        self.writer = writer
        self.server = server
        self.undo_logging: Callable[[], None] | None = undo_logging

    def on_item(self, item: SourceItem) -> None:
        return None

    def on_batch(self, batch: Batch) -> None:
        return None

    def on_record(self, record: Record) -> None:
        if not isinstance(record, DaemonStatus) or record.state != "stopping":
            return
        if self.writer is not None:
            self.writer.write_now()
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.undo_logging is not None:
            self.undo_logging()
            self.undo_logging = None


def _section(sections: Mapping[str, object], name: str, cls: type[Any]) -> Any:
    value = sections.get(name)
    return value if isinstance(value, cls) else cls()


def attach(daemon: Daemon, sections: Mapping[str, object]) -> None:
    """Add this layer's observers and tasks to ``daemon`` (before ``run()``)."""
    metrics_settings: MetricsSettings = _section(sections, "metrics", MetricsSettings)
    service: ServiceSettings = _section(sections, "service", ServiceSettings)
    log = daemon.log

    metrics = MetricsObserver(sysfs_root=service.sysfs_root)
    daemon.observer.add(metrics)

    if service.check_distro_rules:
        watch = DistroRuleWatch(service.rules_root, metrics, log.log)
        daemon.observer.add(watch)
        daemon.tasks.append(watch.run)

    writer = None
    if metrics_settings.textfile:
        writer = TextfileWriter(metrics, metrics_settings.textfile, metrics_settings.textfile_interval, warn=lambda m: log.log(WARNING, m))
        daemon.tasks.append(writer.run)

    server = None
    listen = parse_listen(metrics_settings.listen)
    if listen is not None:
        address, port = listen
        try:
            server = MetricsServer(metrics, address, port)
        except OSError as exc:
            log.log(ERR, f"metrics endpoint {address}:{port}: cannot listen: {exc.strerror or exc}; continuing without it")
        else:
            daemon.notes.append(f"metrics: http://{address}:{server.port}/metrics")

    # The stages' Python logging (the updater's, BCC wrappers') with syslog
    # priority prefixes too, until the daemon stops.
    undo_logging = bridge_logging(log)
    daemon.observer.add(_OnStopping(writer, server, undo_logging))

    if service.notify:
        notifier, interval = Notifier.from_environment(on_error=lambda m: log.log(WARNING, m))
        if notifier.enabled:
            daemon.observer.add(NotifyObserver(notifier))
            if interval is not None:
                daemon.tasks.append(lambda: watchdog_task(notifier, interval))
                daemon.notes.append(f"systemd watchdog: WATCHDOG=1 every {interval:g} s")
