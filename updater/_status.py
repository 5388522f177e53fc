"""Reading and showing the status file the running updater writes.

The file is :func:`ground.records.to_json` of an
:class:`~ground.records.UpdaterStatus`; it is read back into one with
:func:`ground.records.from_json`, so ``status`` shows the same fields the
updater wrote, by name.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ground.errors import InputError, UnavailableError
from ground.records import RecordError, UpdaterState, UpdaterStatus, from_json, to_json


def read_status(path: str) -> UpdaterStatus:
    """The status document.  :class:`UnavailableError` when there is none (the
    daemon never ran here), :class:`InputError` when it is malformed."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise UnavailableError("status", f"{path} does not exist", "is 'kdump-coalesce run' running? see --status-file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}", f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("format") != UpdaterStatus.FORMAT:
        raise InputError(path, f"not a kdump-coalesce status file (format {UpdaterStatus.FORMAT})")
    try:
        return from_json(UpdaterStatus, doc)
    except RecordError as exc:
        raise InputError(path, f"malformed status file: {exc}") from None


def daemon_alive(status: UpdaterStatus) -> bool:
    """Whether the daemon that wrote ``status`` is still running."""
    if not status.running or status.pid <= 0:
        return False
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_json(status: UpdaterStatus) -> dict[str, Any]:
    """``status --json``: the file's document plus ``daemon_alive``."""
    doc: dict[str, Any] = to_json(status)
    doc["daemon_alive"] = daemon_alive(status)
    return doc


def _ago(ts: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({max(time.time() - ts, 0):.0f} s ago)"


_KERNEL_HOTPLUG_TEXT = {
    "stand-aside": "the loaded image has the kernel's crash hotplug support; the kernel updates the header, the daemon repairs",
    "handed-over": "the daemon loaded the image with KEXEC_UPDATE_ELFCOREHDR; the kernel updates the header, the daemon repairs",
    "hand-over": "hand-over planned, not made yet",
    "off": "[updater] kernel-hotplug = off: the daemon manages the header",
    "unavailable": "the kernel supports crash hotplug but no hand-over here: the daemon manages the header",
    "unsupported": "no CONFIG_CRASH_HOTPLUG: the daemon manages the header",
}


def format_status(status: UpdaterStatus) -> list[str]:
    lines = []
    alive = daemon_alive(status)
    running = "running" if alive else ("stopped" if not status.running else f"not running (pid {status.pid} is gone)")
    lines.append(f"daemon:       {running}, pid {status.pid}, updated {_ago(status.updated_at)}")
    lines.append(f"backend:      {status.description}")
    lines.append(f"loader:       {status.loader}")
    if status.kernel_hotplug:
        lines.append(f"kernel hp:    {status.kernel_hotplug}: {_KERNEL_HOTPLUG_TEXT.get(status.kernel_hotplug, '')}")
    loaded = status.kdump_loaded
    correct = status.kdump_correct
    lines.append(
        "kdump:        "
        + ("loaded" if loaded else "NOT loaded" if loaded is False else "cannot be loaded on this kernel")
        + ", header "
        + ("current" if correct else "NOT known to be current" if correct is False else "not loaded by us (dry-run)" if status.dry_run else "unknown")
        + f" (state {status.state})"
    )
    batch = status.last_batch
    if batch is not None:
        lines.append(f"last batch:   {batch.describe} at {_ago(batch.at)}")
    reload = status.last_reload
    if reload is not None:
        exact = "exact" if reload.window_exact else "upper bound"
        lines.append(
            f"last reload:  {reload.result} via {reload.backend} at {_ago(reload.at)}: "
            f"wall {reload.wall_s:.3f} s, window {reload.window_s:.3f} s ({exact}; {reload.window_source})"
        )
        lines.append(f"              {reload.reason}")
    header = status.header
    if header:
        gib = (header.get("ram_bytes") or 0) / (1 << 30)
        lines.append(
            f"header:       {header.get('phnum')} program headers, {header.get('ranges')} RAM ranges ({gib:.2f} GiB), "
            f"CPU notes {','.join(map(str, header.get('note_cpus', []))) or 'none'}"
            + (f", notes missing for CPU {','.join(map(str, header['missing_note_cpus']))}" if header.get("missing_note_cpus") else "")
            + f", sha256 {str(header.get('sha256'))[:16]}"
        )
    lines.append("counts:       " + ", ".join(f"{k} {v}" for k, v in status.counts.items()))
    if status.last_error:
        lines.append(f"ERROR:        {status.last_error}")
    for path, consequence in status.missing:
        lines.append(f"missing:      {path}: {consequence}")
    return lines


def status_exit(status: UpdaterStatus) -> int:
    """0 when kdump is current (or dry-run/kernel mode is healthy), 1 when the
    last reload failed or the daemon died."""
    if status.state is UpdaterState.FAILED or status.kdump_correct is False:
        return 1
    if status.running and not daemon_alive(status):
        return 1
    return 0
