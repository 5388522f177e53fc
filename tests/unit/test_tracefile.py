from __future__ import annotations

import json
from pathlib import Path

import pytest

from ground.errors import TraceFormatError
from ground.events import Action, EventsLost, HotplugEvent, Kind
from ground.records import NoteRecord
from ground.tracefile import TraceHeader, TraceReader, open_trace_for_writing

HEADER = TraceHeader(host="h", kernel="6.1.0", block_size=128 << 20, created=0.0)


def write(path: Path, items: list[HotplugEvent | EventsLost]) -> None:
    w = open_trace_for_writing(str(path), HEADER)
    for it in items:
        w.item(it)
    w.observation(NoteRecord("written by the test"))
    w.close()


ITEMS: list[HotplugEvent | EventsLost] = [
    HotplugEvent(Kind.MEMORY, Action.ONLINE, 10, "uevent", start=1 << 32, size=128 << 20),
    HotplugEvent(Kind.CPU, Action.OFFLINE, 11, "bpf", cpu=1, ret=0),
    HotplugEvent(Kind.MEMORY, Action.OFFLINE, 12, "bpf", start=1 << 32, size=128 << 20, ret=-16),
    EventsLost(13, "uevent", 4, "ENOBUFS"),
]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write(path, ITEMS)
    reader = TraceReader(str(path))
    assert reader.read_all() == ITEMS
    assert reader.header == HEADER
    assert reader.observations == 1


def test_truncated_last_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write(path, ITEMS)
    data = path.read_text()
    path.write_text(data[: len(data) - 10])  # cut into the final record
    with pytest.raises(TraceFormatError) as exc:
        TraceReader(str(path)).read_all()
    assert exc.value.line == 6 and str(path) in str(exc.value) and "truncated" in str(exc.value)


def test_garbage_line_strict_and_lenient(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write(path, ITEMS)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, "this is not json\n")
    lines.insert(3, json.dumps({"type": "event", "t": 1, "kind": "disk", "action": "online", "source": "x"}) + "\n")
    path.write_text("".join(lines))
    with pytest.raises(TraceFormatError, match=r":3: not JSON"):
        TraceReader(str(path)).read_all()
    reader = TraceReader(str(path), lenient=True)
    assert reader.read_all() == ITEMS
    assert reader.skipped == 2
    assert "unknown kind 'disk'" in reader.errors[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty trace file"),
        ('{"type":"event"}\n', "missing trace header"),
        ('{"type":"header","format":"kdump-coalesce-trace","version":99,"block_size":1}\n', "unsupported trace version"),
        ('{"type":"header","format":"other","version":1,"block_size":1}\n', "unknown format"),
    ],
)
def test_bad_headers(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(TraceFormatError, match=message):
        TraceReader(str(path), lenient=True).read_all()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot open"):
        TraceReader(str(tmp_path / "nope")).read_all()
