"""The typed records and their one serialiser (ground.records)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ground.ranges import PhysRange
from ground.records import (
    RECORD_KINDS,
    BatchSummary,
    DaemonStatus,
    ErrorRecord,
    KexecCallRecord,
    NoteRecord,
    RecordError,
    ReloadRecord,
    ReloadResult,
    UpdaterState,
    UpdaterStatus,
    WindowKind,
    from_json,
    kdump_correct,
    to_json,
)
from ground.tracefile import TraceHeader, TraceReader, TraceWriter
from tests.fixtures.doubles import updater_status

RELOAD = ReloadRecord(
    backend="kexec-fast", result=ReloadResult.FALLBACK, reason="batch 3: +1 range", batch=3, kdump_correct=True,
    wall_s=0.1234567, window_s=0.05, window_kind=WindowKind.BPF, window_source="bpf: kexec_load", ranges=2,
    cpus=(0, 1), earlier_errors=("kexec-fast: refused",), backend_figures={"fastpath_error": {"error": "SegmentLayoutError"}},
)


def test_reload_json_names_and_derived_fields() -> None:
    doc = to_json(RELOAD)
    assert doc["result"] == "fallback" and doc["window_kind"] == "bpf" and doc["window_exact"] is True
    assert doc["wall_s"] == 0.123457  # seconds to the microsecond
    assert doc["cpus"] == [0, 1] and doc["earlier_errors"] == ["kexec-fast: refused"]
    # A backend's own figures sit under their own key, as the trace has always had them.
    assert doc["fastpath_error"] == {"error": "SegmentLayoutError"} and "backend_figures" not in doc
    bound = to_json(ReloadRecord(backend="kexec", result=ReloadResult.OK, reason="r", batch=1, kdump_correct=True,
                                 window_kind=WindowKind.LOADER_LIFETIME))
    assert bound["window_exact"] is False


def test_status_round_trips_through_json() -> None:
    status = UpdaterStatus(
        format=UpdaterStatus.FORMAT, pid=42, running=True, started_at=1.5, updated_at=2.5, backend="kexec",
        backend_why="requested", description="kexec: requested", loader="/sbin/kexec -p", state=UpdaterState.OK,
        kdump_loaded=True, kdump_correct=True, dry_run=False, last_batch=BatchSummary(3, 16, "quiet", 1, "batch 3 ...", 2.0),
        last_reload=RELOAD, last_error=None, header={"sha256": "ab", "ranges": 2}, missing=(("/proc/kcore", "no kernel text"),),
        counts={"batches": 3},
    )
    text = json.dumps(to_json(status))
    back = from_json(UpdaterStatus, json.loads(text))
    assert back.last_reload is not None and back.last_reload.backend_figures == RELOAD.backend_figures
    assert back.last_reload.result is ReloadResult.FALLBACK and back.state is UpdaterState.OK
    assert to_json(back) == to_json(status)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("backend"), "backend: missing"),
        (lambda d: d.update(state="sideways"), "state: 'sideways' is not one of"),
        (lambda d: d.update(pid="42"), "pid: expected int"),
        (lambda d: d["last_reload"].update(window_kind="guess"), "last_reload.window_kind"),
    ],
)
def test_from_json_names_the_field(mutate: object, message: str) -> None:
    doc = to_json(updater_status("kexec", kdump_correct=True))
    doc["last_reload"] = to_json(RELOAD)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(RecordError, match=message):
        from_json(UpdaterStatus, doc)


def test_kdump_correct_has_one_definition() -> None:
    assert kdump_correct(UpdaterState.KERNEL, dry_run=False, loaded=False) is True
    assert kdump_correct(UpdaterState.FAILED, dry_run=False, loaded=True) is False
    assert kdump_correct(UpdaterState.OK, dry_run=True, loaded=True) is None
    assert kdump_correct(UpdaterState.OK, dry_run=False, loaded=True) is True
    assert kdump_correct(UpdaterState.OK, dry_run=False, loaded=False) is False
    assert kdump_correct(UpdaterState.STARTING, dry_run=False, loaded=True) is None


def test_every_record_kind_goes_into_the_trace_file(tmp_path: Path) -> None:
    # Before the records were typed, the trace writer knew batch/reload/note/status
    # only: a failed reload's "error" record made the daemon raise ValueError.
    out = io.StringIO()
    writer = TraceWriter(out, TraceHeader("h", "k", 128 << 20, 0.0))
    records = [
        RELOAD,
        ErrorRecord(stage="updater", message="reload failed: EBUSY", batch=3, kdump_loaded=False),
        KexecCallRecord(external=True, syscall="kexec_load", pid=7, comm="kexec", flags=1, ret=0, window_s=0.3),
        NoteRecord("hello"),
        DaemonStatus("ready", updater_status()),
    ]
    for record in records:
        writer.observation(record, clock=12.5)
    kinds = [json.loads(line)["type"] for line in out.getvalue().splitlines()[1:]]
    assert kinds == ["reload", "error", "kexec-call", "note", "status"]
    assert set(kinds) < set(RECORD_KINDS)
    path = tmp_path / "t.jsonl"
    path.write_text(out.getvalue())
    reader = TraceReader(str(path))
    assert list(reader) == []  # observations are carried along, not replayed
    assert reader.header is not None and reader.observations == len(records)


def test_ranges_serialise_half_open() -> None:
    assert to_json((PhysRange(0x1000, 0x2000),)) == [[0x1000, 0x2000]]
