"""The daemon's lifecycle with a synthetic source (no root, no kernel)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def kdump_coalesce(*argv: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kdump_coalesce", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def records(path: Path, kind: str) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == kind:
            out.append(rec)
    return out


def test_run_to_end_of_a_scenario(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    proc = kdump_coalesce("run", "--source", "scenario:cpu:2:4", "--trace-file", str(trace), "--backend", "dry-run",
                          "--staging-dir", str(tmp_path / "staging"))
    _out, err = proc.communicate(timeout=60)
    if proc.returncode == 2 and "--backend" in err:
        pytest.fail(f"run rejected --backend: {err}")
    assert proc.returncode == 0, err
    (batch,) = records(trace, "batch")
    assert batch["cpus_online"] == [2, 3]
    states = [r["state"] for r in records(trace, "status")]
    assert states[0] == "ready" and states[-1] == "stopping"


def test_sigterm_flushes_the_open_batch_then_exits_zero(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    # 16 blocks, 1 s apart at recorded speed: plenty of time to signal mid-burst.
    proc = kdump_coalesce(
        "run",
        "--source",
        "scenario:resize:4G:6G:interval=1s",
        "--speed",
        "1",
        "--quiet",
        "30",
        "--trace-file",
        str(trace),
        "--backend",
        "dry-run",
        "--staging-dir",
        str(tmp_path / "staging"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if trace.exists() and len(records(trace, "event")) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("daemon never recorded two events")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping sources" in err
    (batch,) = records(trace, "batch")
    assert batch["reason"] == "eof"  # flushed at stop, not dropped
    assert 2 <= batch["events"] < 16  # type: ignore[operator]
    assert records(trace, "status")[-1]["state"] == "stopping"
