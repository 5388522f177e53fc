"""The daemon: live sources -> coalescer -> updater, with observers on every stage.

Lifecycle:

1. open the sources (``--source``) and the updater (``--backend``), and say
   what was chosen and why;
2. reconcile: the updater builds the header from the live state and reloads
   if what is loaded is not known to match;
3. ready (``status`` record ``state=ready``: sd_notify READY=1 listens for it);
4. batches flow until the sources end (a replay) or a signal arrives;
5. SIGTERM/SIGINT stop the *sources* only: the open batch is flushed and its
   reload runs to completion, so stopping never leaves kdump unloaded or
   stale by choice.  A second signal cancels everything still pending (the
   updater shields a load that is already inside the kernel).
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from coalescer import CoalescerStage, Policy, run_pipeline
from ground.observer import FanOut
from ground.records import Batch, DaemonStatus, UpdaterStatus
from probes import SOURCE_SPECS, EventSource

from ._log import INFO, LOG_FORMATS, WARNING, LogObserver
from ground.config import option


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    source: str = option("auto", cli=True, help=f"event source: {SOURCE_SPECS}")
    trace_file: str = option("", cli=True, help="write every event, batch and reload to this trace file")
    speed: float = option(0.0, cli=True, help="replay:/scenario: sources: pace at N x recorded speed (0: as fast as possible)")
    log_format: str = option("text", cli=True, choices=LOG_FORMATS, help="stderr log lines as text or JSON")


class Updater(Protocol):
    """What the daemon needs of the updater (``updater.Updater`` implements it)."""

    async def consume(self, batch: Batch) -> None: ...

    async def reconcile(self) -> None: ...

    def describe(self) -> str: ...

    def status(self) -> UpdaterStatus: ...

    async def aclose(self) -> None: ...


BackgroundTask = Callable[[], Awaitable[None]]


@dataclass
class Daemon:
    policy: Policy
    sources: list[EventSource]
    updater: Updater
    observer: FanOut
    log: LogObserver
    notes: list[str] = field(default_factory=list)
    tasks: list[BackgroundTask] = field(default_factory=list)
    stage: CoalescerStage | None = None
    signals_seen: int = 0

    async def run(self) -> None:
        for note in self.notes:
            self.log.log(INFO, note)
        self.log.log(INFO, f"updater: {self.updater.describe()}")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                for task in self.tasks:
                    nursery.start_soon(task)
                await self.updater.reconcile()
                self.stage = await nursery.start(self._pipeline, nursery.cancel_scope)
                self.observer.on_record(self._status("ready"))
        finally:
            self.observer.on_record(self._status("stopping"))
            with trio.CancelScope(shield=True):
                await self.updater.aclose()

    async def _pipeline(self, done: trio.CancelScope, *, task_status: trio.TaskStatus[CoalescerStage]) -> None:
        await run_pipeline(self.sources, self.updater, self.policy, self.observer, task_status=task_status)
        done.cancel()  # sources ended (or were stopped) and the last batch is delivered

    async def _watch_signals(self, everything: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.signals_seen += 1
                name = signal.Signals(signum).name
                if self.signals_seen == 1 and self.stage is not None:
                    self.log.log(INFO, f"{name}: stopping sources; the open batch is flushed and loaded first")
                    self.stage.stop_sources()
                else:
                    self.log.log(WARNING, f"{name}: stopping now")
                    everything.cancel()

    def _status(self, state: str) -> DaemonStatus:
        stage = self.stage
        return DaemonStatus(
            state=state,
            updater=self.updater.status(),
            items=stage.core.items if stage is not None else None,
            batches=stage.core.batches if stage is not None else None,
            deliveries=stage.deliveries if stage is not None else None,
        )


def settings_sections(extra: Mapping[str, type[Any]]) -> dict[str, type[Any]]:
    return {"coalescer": Policy, "daemon": DaemonSettings, **extra}
