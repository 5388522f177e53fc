"""Log lines for the records the operations layer cares about, and the stages'
Python logging carried through the daemon's log with priority prefixes."""

from __future__ import annotations

import io
import json
import logging

from ground.records import ErrorRecord, KexecCallRecord
from kdump_coalesce._log import LogObserver, bridge_logging


def test_error_and_external_kexec_records() -> None:
    out = io.StringIO()
    log = LogObserver(out, fmt="text")
    log.on_record(ErrorRecord(stage="updater", batch=4, message="reload failed: EBUSY: kdump may be stale", kdump_loaded=True))
    log.on_record(KexecCallRecord(external=True, syscall="kexec_load", pid=77, comm="kexec", flags=0x3E0001, ret=0, window_s=0.4))
    log.on_record(KexecCallRecord(external=False, syscall="kexec_load", pid=78, comm="python3", flags=0x3E0001, ret=0, window_s=0.1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<3>reload failed: EBUSY: kdump may be stale ") and "stage=updater" in lines[0]
    assert lines[1].startswith("<4>kexec call by another process ") and "pid=77" in lines[1] and "comm=kexec" in lines[1]


def test_python_logging_gets_priorities_and_json_then_is_restored() -> None:
    out = io.StringIO()
    logger = logging.getLogger("kdump_coalesce.updater")
    parent = logging.getLogger("kdump_coalesce")
    before = (parent.level, parent.propagate, list(parent.handlers))
    undo = bridge_logging(LogObserver(out, fmt="json"))
    try:
        logger.error("reload failed for batch %d: %s", 3, "boom")
        logger.warning("retrying")
        logger.info("staged")
        logger.debug("not shown without -v")
    finally:
        undo()
    records = [(line[: line.index(">") + 1], json.loads(line[line.index(">") + 1 :])) for line in out.getvalue().splitlines()]
    assert [(p, r["msg"]) for p, r in records] == [
        ("<3>", "reload failed for batch 3: boom"),
        ("<4>", "retrying"),
        ("<6>", "staged"),
    ]
    assert records[0][1]["logger"] == "kdump_coalesce.updater"
    assert (parent.level, parent.propagate, list(parent.handlers)) == before
