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
- a check for the distro's reload-per-event udev rule (:mod:`._distro_rules`):
  when one is still active, every burst is reloaded twice; the daemon says so
  at start (warning priority) and in ``kdump_coalesce_distro_rule_active``.

None of these can stop the daemon: a metrics or notify failure is logged and
the daemon goes on keeping kdump current.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ground.records import Batch, DaemonStatus, Record
from ground.events import SourceItem

from ._distro_rules import active_distro_rules, distro_rules
from ._log import ERR, WARNING, bridge_logging
from ._metrics import MetricsServer, MetricsSettings, MetricsObserver, TextfileWriter, parse_listen
from ._notify import Notifier, NotifyObserver, watchdog_task
from ground.config import option
from .daemon import Daemon


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    notify: bool = option(True, help="speak sd_notify to systemd when $NOTIFY_SOCKET is set (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)")
    check_distro_rules: bool = option(True, help="warn at start when a distro udev rule still reloads kdump on every event")
    rules_root: str = option("/", help="look for udev rules under this directory (tests)")
    sysfs_root: str = option("/", help="read kexec_crash_loaded and crash_hotplug for the metrics under this directory (tests)")


SECTIONS: dict[str, type] = {"metrics": MetricsSettings, "service": ServiceSettings}


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
        present = distro_rules(service.rules_root)
        metrics.set_distro_rules({rule.name: state.active for rule, state in present})
        for rule, state in active_distro_rules(service.rules_root):
            log.log(
                WARNING,
                f"distro udev rule /{state.effective} ({rule.package}) is active: it reloads kdump on every event "
                "as well, so every burst is reloaded twice; mask it with 'kdump-coalesce install-service'",
                rule=rule.name,
            )

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
