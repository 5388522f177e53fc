"""Running kdump-coalesce in the guest: arguments, and the figures each scenario reports.

Issue 5 asks every scenario to report reloads, per-reload window, time from
the last hotplug event to kdump being correct again, and wall time.
:func:`report` prints them and, if ``KDC_VM_REPORT`` names a file, appends
them there as one JSON line (the figures for the issue's notes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .harness import CAPTURE_APPEND, GUEST_XFER, KexecMode, TraceLog, VmAssets


def kexec_daemon_args(
    assets: VmAssets,
    *,
    load_path: KexecMode = "kexec_load",
    source: str = "auto",
    backend: str = "kexec",
    extra: Sequence[str] = (),
) -> list[str]:
    """``kdump-coalesce run`` arguments for the guest: a kexec backend with the VM tier's capture kernel.

    Paths are host paths: the daemon runs chrooted into the host root.
    """
    return [
        "run",
        "--source", source,
        "--backend", backend,
        "--kexec-binary", "/sbin/kexec",
        "--kexec-kernel", str(assets.kernel),
        "--kexec-initrd", str(assets.capture_initrd),
        "--kexec-cmdline", CAPTURE_APPEND,
        "--kexec-load-path", load_path,
        "--kexec-distro", "none",
        "--status-file", f"{GUEST_XFER}/status.json",
        "-v",
        *extra,
    ]


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    scenario: str
    batch_reloads: list[str]  # results of the reloads after `ready` (batches, not the start-up reconciliation)
    batch_windows_s: list[float | None]
    reloads_ok: int
    reloads_failed: int
    reloads_skipped: int
    windows_s: list[float | None]
    windows_exact: list[bool]
    time_to_correct_s: float | None
    wall_s: float
    events: int
    sources: list[str]
    daemon_start_s: float | None
    vmcore: str | None = None  # the capture's check, when the scenario panicked before reporting


def report(
    scenario: str,
    trace: TraceLog,
    *,
    wall_s: float,
    time_to_correct_s: float | None,
    daemon_start_s: float | None = None,
    vmcore: str | None = None,
) -> ScenarioReport:
    batch = trace.reloads_after_ready()
    r = ScenarioReport(
        scenario=scenario,
        batch_reloads=[x.result for x in batch],
        batch_windows_s=[x.window_s for x in batch if x.result == "ok"],
        reloads_ok=len(trace.reloads_ok()),
        reloads_failed=sum(1 for x in trace.reloads if x.result == "failed"),
        reloads_skipped=sum(1 for x in trace.reloads if x.result == "skipped"),
        windows_s=[x.window_s for x in trace.reloads_ok()],
        windows_exact=[bool(x.record.get("window_exact")) for x in trace.reloads_ok()],
        time_to_correct_s=time_to_correct_s,
        wall_s=wall_s,
        events=len(trace.events),
        sources=sorted(trace.sources()),
        daemon_start_s=daemon_start_s,
        vmcore=vmcore,
    )
    print(f"scenario report: {json.dumps(asdict(r))}")
    path = os.environ.get("KDC_VM_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"at": time.time(), **asdict(r)}) + "\n")
    return r
