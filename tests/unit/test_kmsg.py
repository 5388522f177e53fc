"""The kernel-log source: skipped in-kernel elfcorehdr updates -> EventsLost(kmsg:CAUSE).

Pure: /dev/kmsg records as the kernel formats them (``PRI,SEQ,TS,FLAGS;MSG``,
the messages verbatim from kernel/crash_core.c and arch/x86/kernel/crash.c of
Debian's 6.12), a pipe or a fake reader standing in for the device.  On the
real 6.12 guest the VM tier forces the trylock case.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from coalescer import BatchBuilder
from ground.errors import UnavailableError
from ground.events import EventsLost, SourceItem
from probes import KmsgSource, classify, kernel_update_causes, parse_kmsg_lines
from probes._kmsg import elfsz_of, kernel_has_crash_hotplug

TRYLOCK = b"6,4711,123456789,-;crash hp: kexec_trylock() failed, kdump image may be inaccurate\n"
ELFSZ = b"3,4712,123456790,-;crash hp: update elfcorehdr elfsz 921664 > memsz 917504\n"
OTHER = b"6,4713,123456791,-;memory memory32: Offline failed.\n SUBSYSTEM=memory\n DEVICE=+memory:memory32\n"
LOCATE = b"3,4714,123456792,-;crash hp: unable to locate elfcorehdr segment\n"


def test_records_parse_and_continuations_are_skipped() -> None:
    records = parse_kmsg_lines(TRYLOCK + OTHER + b"garbage without a prefix\n" + b"x,y,z;bad numbers\n")
    assert [(r.level, r.seq, r.ts_us) for r in records] == [(6, 4711, 123456789), (6, 4713, 123456791)]
    assert records[0].message == "crash hp: kexec_trylock() failed, kdump image may be inaccurate"


@pytest.mark.parametrize(
    ("line", "cause"),
    [(TRYLOCK, "trylock"), (ELFSZ, "elfsz"), (LOCATE, "update-failed"), (OTHER, None),
     (b"6,1,1,-;crash hp: hp_action 4\n", None), (b"6,1,1,-;crash hp: updated elfcorehdr\n", None)],
)
def test_classify_the_kernels_own_words(line: bytes, cause: str | None) -> None:
    (record, *_) = parse_kmsg_lines(line)
    assert classify(record.message) == cause


def test_elfsz_is_read_back() -> None:
    assert elfsz_of("crash hp: update elfcorehdr elfsz 921664 > memsz 917504") == 921664
    assert elfsz_of("something else") is None


def test_causes_from_batch_sources() -> None:
    assert kernel_update_causes(("uevent", "kmsg:trylock", "bpf", "kmsg:elfsz", "kmsg:trylock")) == ("elfsz", "trylock")
    assert kernel_update_causes(("uevent", "kmsgx")) == ()


class FakeKmsg:
    """/dev/kmsg as read(2) answers: one record per read, EAGAIN when empty, EPIPE on an overrun."""

    def __init__(self, answers: list[bytes | int]) -> None:
        self.answers = answers

    def __call__(self, fd: int, size: int) -> bytes:
        if not self.answers:
            raise BlockingIOError(errno.EAGAIN, "empty")
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise OSError(answer, os.strerror(answer))
        return answer


def test_drain_turns_skips_into_events_lost(tmp_path: Path) -> None:
    dev = tmp_path / "kmsg"
    dev.write_bytes(b"")
    src = KmsgSource(str(dev), reader=FakeKmsg([OTHER, TRYLOCK, errno.EPIPE, ELFSZ]), clock_ns=lambda: 42)
    items = src.drain()
    assert [i.source for i in items if isinstance(i, EventsLost)] == ["kmsg:trylock", "kmsg:overrun", "kmsg:elfsz"]
    assert all(isinstance(i, EventsLost) and i.count == 1 and i.ts_ns == 42 for i in items)
    assert isinstance(items[0], EventsLost) and "kexec_trylock() failed" in items[0].reason
    assert src.records == 3 and src.skipped_updates["trylock"] == 1 and src.skipped_updates["overrun"] == 1
    assert src.drain() == []  # EAGAIN: nothing more, no block
    src.close()


def test_other_read_errors_are_not_swallowed(tmp_path: Path) -> None:
    dev = tmp_path / "kmsg"
    dev.write_bytes(b"")
    src = KmsgSource(str(dev), reader=FakeKmsg([errno.EINVAL]))
    with pytest.raises(OSError):
        src.drain()
    src.close()


def test_unreadable_kmsg_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="kernel log"):
        KmsgSource(str(tmp_path / "missing"))


async def test_run_sends_what_the_device_says_and_a_batch_carries_the_cause() -> None:
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    src = KmsgSource("/dev/null")
    os.close(src.fileno())
    src._fd = rfd  # the pipe is the device
    send, recv = trio.open_memory_channel[SourceItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(src.run, send)
        os.write(wfd, TRYLOCK)
        with trio.fail_after(5):
            item = await recv.receive()
        nursery.cancel_scope.cancel()
    os.close(wfd)
    assert isinstance(item, EventsLost) and item.source == "kmsg:trylock"
    builder = BatchBuilder(1)
    builder.fold(item)
    batch = builder.build("quiet")
    assert batch.rescan and kernel_update_causes(batch.sources) == ("trylock",)


def test_crash_hotplug_kernel_detection(tmp_path: Path) -> None:
    assert not kernel_has_crash_hotplug(str(tmp_path))
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/crash_elfcorehdr_size").write_text("917616\n")
    assert kernel_has_crash_hotplug(str(tmp_path))


def test_metrics_count_skips_repairs_and_hand_overs() -> None:
    from ground.records import ReloadRecord, ReloadResult
    from kdump_coalesce._metrics import MetricsObserver
    from tests.unit.test_ops_metrics import parse, value

    m = MetricsObserver()
    f = parse(m.render())
    assert value(f, "kdump_coalesce_kernel_updates_skipped_total", cause="trylock") == 0  # the series exist before any
    m.on_item(EventsLost(1, "kmsg:trylock", count=1, reason="kernel: crash hp: kexec_trylock() failed"))
    m.on_item(EventsLost(2, "kmsg:trylock", count=1))
    m.on_item(EventsLost(3, "kmsg:elfsz", count=1))
    m.on_item(EventsLost(4, "uevent", count=7))  # not the kernel's updater
    m.on_record(ReloadRecord(backend="kexec-fast", result=ReloadResult.OK, reason="start-up hand-over", batch=0,
                             kdump_correct=True, purpose="hand-over", kernel_hotplug=True, crash_hotplug_after=1))
    m.on_record(ReloadRecord(backend="kexec-fast", result=ReloadResult.OK, reason="repair", batch=1, kdump_correct=True,
                             purpose="repair", repair_causes=("removal", "trylock")))
    m.on_record(ReloadRecord(backend="kexec-fast", result=ReloadResult.FAILED, reason="repair", batch=2, kdump_correct=False,
                             purpose="repair", repair_causes=("elfsz",)))
    f = parse(m.render())
    assert value(f, "kdump_coalesce_kernel_updates_skipped_total", cause="trylock") == 2
    assert value(f, "kdump_coalesce_kernel_updates_skipped_total", cause="elfsz") == 1
    assert value(f, "kdump_coalesce_kernel_updates_skipped_total", cause="overrun") == 0
    assert value(f, "kdump_coalesce_kernel_repairs_total", cause="removal") == 1
    assert value(f, "kdump_coalesce_kernel_repairs_total", cause="trylock") == 1
    assert value(f, "kdump_coalesce_kernel_repairs_total", cause="elfsz") == 0  # failed: not a repair
    assert value(f, "kdump_coalesce_hand_overs_total", result="ok") == 1
