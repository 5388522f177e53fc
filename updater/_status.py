"""Reading and showing the status file the running updater writes."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ground.errors import InputError, UnavailableError

from ._updater import STATUS_FORMAT


def read_status(path: str) -> dict[str, Any]:
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
    if not isinstance(doc, dict) or doc.get("format") != STATUS_FORMAT:
        raise InputError(path, f"not a kdump-coalesce status file (format {STATUS_FORMAT})")
    doc["daemon_alive"] = _alive(doc.get("pid")) if doc.get("running") else False
    return doc


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ago(ts: object) -> str:
    if not isinstance(ts, (int, float)):
        return "?"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({max(time.time() - ts, 0):.0f} s ago)"


def format_status(doc: dict[str, Any]) -> list[str]:
    lines = []
    running = "running" if doc.get("daemon_alive") else ("stopped" if not doc.get("running") else f"not running (pid {doc.get('pid')} is gone)")
    lines.append(f"daemon:       {running}, pid {doc.get('pid')}, updated {_ago(doc.get('updated_at'))}")
    lines.append(f"backend:      {doc.get('description')}")
    lines.append(f"loader:       {doc.get('loader')}")
    loaded = doc.get("kdump_loaded")
    correct = doc.get("kdump_correct")
    lines.append(
        "kdump:        "
        + ("loaded" if loaded else "NOT loaded" if loaded is False else "cannot be loaded on this kernel")
        + ", header "
        + ("current" if correct else "NOT known to be current" if correct is False else "not loaded by us (dry-run)" if doc.get("dry_run") else "unknown")
        + f" (state {doc.get('state')})"
    )
    batch = doc.get("last_batch")
    if batch:
        lines.append(f"last batch:   {batch.get('describe')} at {_ago(batch.get('at'))}")
    reload = doc.get("last_reload")
    if reload:
        exact = "exact" if reload.get("window_exact") else "upper bound"
        lines.append(
            f"last reload:  {reload.get('result')} via {reload.get('backend')} at {_ago(reload.get('at'))}: "
            f"wall {reload.get('wall_s', 0):.3f} s, window {reload.get('window_s', 0):.3f} s ({exact}; {reload.get('window_source')})"
        )
        lines.append(f"              {reload.get('reason')}")
    header = doc.get("header")
    if header:
        gib = (header.get("ram_bytes") or 0) / (1 << 30)
        lines.append(
            f"header:       {header.get('phnum')} program headers, {header.get('ranges')} RAM ranges ({gib:.2f} GiB), "
            f"CPU notes {','.join(map(str, header.get('note_cpus', []))) or 'none'}"
            + (f", notes missing for CPU {','.join(map(str, header['missing_note_cpus']))}" if header.get("missing_note_cpus") else "")
            + f", sha256 {str(header.get('sha256'))[:16]}"
        )
    counts = doc.get("counts") or {}
    lines.append("counts:       " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if doc.get("last_error"):
        lines.append(f"ERROR:        {doc['last_error']}")
    for path, consequence in doc.get("missing") or []:
        lines.append(f"missing:      {path}: {consequence}")
    return lines


def status_exit(doc: dict[str, Any]) -> int:
    """0 when kdump is current (or dry-run/kernel mode is healthy), 1 when the
    last reload failed or the daemon died."""
    if doc.get("state") == "failed" or doc.get("kdump_correct") is False:
        return 1
    if doc.get("running") and not doc.get("daemon_alive"):
        return 1
    return 0
