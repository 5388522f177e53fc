"""The distro-rule watch (kdump_coalesce.ops.DistroRuleWatch): the Debian
package's unit masks kdump-tools' rule in ExecStartPost=, i.e. after READY=1,
so the verdict waits for ready plus a grace period instead of warning at every
start; later reads log only changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from ground.records import DaemonStatus
from kdump_coalesce._distro_rules import take_over
from kdump_coalesce._log import INFO, WARNING
from kdump_coalesce._metrics import MetricsObserver
from kdump_coalesce.ops import DistroRuleWatch
from tests.fixtures.doubles import updater_status

RULE = 'SUBSYSTEM=="memory", ACTION=="online", PROGRAM="/usr/sbin/kdump-config try-reload"\n'


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, priority: int, message: str, **fields: Any) -> None:
        self.lines.append((priority, message))

    def warnings(self) -> list[str]:
        return [m for p, m in self.lines if p == WARNING]


def debian_root(tmp_path: Path) -> Path:
    rules = tmp_path / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "50-kdump-tools.rules").write_text(RULE)
    return tmp_path


def status(state: str) -> DaemonStatus:
    return DaemonStatus(state=state, updater=updater_status(), items=None, batches=None, deliveries=None)


def gauge(metrics: MetricsObserver) -> float:
    value = metrics.registry.get_sample_value("kdump_coalesce_distro_rule_active", {"rule": "50-kdump-tools.rules"})
    assert value is not None
    return value


def test_masked_after_ready_within_the_grace_is_no_warning(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    metrics, log = MetricsObserver(sysfs_root=str(tmp_path)), Log()

    async def main() -> None:
        watch = DistroRuleWatch(str(root), metrics, log, grace_s=30.0, poll_s=1.0, recheck_s=60.0)
        assert gauge(metrics) == 1  # at start the rule still runs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            await trio.sleep(5)
            watch.on_record(status("ready"))
            await trio.sleep(3)  # what ExecStartPost= takes
            take_over(str(root))
            await trio.sleep(2)
            assert watch.judged and gauge(metrics) == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert log.warnings() == []
    assert (INFO, "distro udev rule 50-kdump-tools.rules was active at start and is masked now") in log.lines


def test_still_active_after_the_grace_warns_once_then_follows_changes(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    metrics, log = MetricsObserver(sysfs_root=str(tmp_path)), Log()

    async def main() -> None:
        watch = DistroRuleWatch(str(root), metrics, log, grace_s=30.0, poll_s=1.0, recheck_s=60.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            watch.on_record(status("ready"))
            await trio.sleep(29)
            assert not watch.judged and log.warnings() == []
            await trio.sleep(2)
            assert watch.judged and len(log.warnings()) == 1 and "reloaded twice" in log.warnings()[0]
            take_over(str(root))
            await trio.sleep(61)
            assert gauge(metrics) == 0
            assert (INFO, "distro udev rule 50-kdump-tools.rules is no longer active") in log.lines
            (root / "run/udev/rules.d/50-kdump-tools.rules").unlink()  # the mask goes: the rule runs again
            await trio.sleep(61)
            assert gauge(metrics) == 1 and len(log.warnings()) == 2
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_daemon_that_stops_before_the_verdict_still_gives_it(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    metrics, log = MetricsObserver(sysfs_root=str(tmp_path)), Log()
    watch = DistroRuleWatch(str(root), metrics, log)
    watch.on_record(status("stopping"))
    watch.on_record(status("stopping"))
    assert len(log.warnings()) == 1
