"""uevent parsing from real captured datagrams, the source against a fake
kernel endpoint (a datagram socketpair), ENOBUFS, and cross-source dedup."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
import trio

from coalescer import BatchRecorder, Policy, run_pipeline
from probes import UeventError, UeventSource, parse_uevent, uevent_to_event
from ground.events import Action, EventsLost, HotplugEvent, Kind, SourceItem
from probes._bpf_program import RECORD, RecordType
from probes import decode_record

FIXTURES = Path(__file__).parent.parent / "fixtures"
HOST_CPU1 = FIXTURES / "uevent" / "cpu1-offline-online"
VM = FIXTURES / "vm" / "uevents"
VM_BLOCK = int((FIXTURES / "vm" / "block_size_bytes").read_text().strip(), 16)


def datagrams(directory: Path) -> list[bytes]:
    files = sorted(directory.glob("*.bin"))
    assert files, f"no captured uevents in {directory}"
    return [f.read_bytes() for f in files]


def events_from(directory: Path, block_size: int) -> list[HotplugEvent]:
    out = []
    for i, data in enumerate(datagrams(directory)):
        ev = uevent_to_event(parse_uevent(data), block_size=block_size, ts_ns=i)
        if ev is not None:
            out.append(ev)
    return out


def test_host_cpu1_offline_online_capture() -> None:
    # The real capture also holds cpuid's remove/add of /devices/virtual/cpuid/cpu1:
    # same basename, other subsystem, not a CPU hotplug event.
    raw = [parse_uevent(d) for d in datagrams(HOST_CPU1)]
    assert {u.subsystem for u in raw} == {"cpu", "cpuid"}
    events = events_from(HOST_CPU1, 128 << 20)
    assert [(e.kind, e.action, e.cpu) for e in events] == [(Kind.CPU, Action.OFFLINE, 1), (Kind.CPU, Action.ONLINE, 1)]
    assert all(e.ret is None and e.source == "uevent" for e in events)


def test_seqnum_and_env() -> None:
    u = parse_uevent(datagrams(HOST_CPU1)[1])
    assert u.action == "offline" and u.devpath == "/devices/system/cpu/cpu1"
    assert u.seqnum is not None and u.env["MODALIAS"].startswith("cpu:type:x86")


@pytest.mark.skipif(not (VM / "memory-hot-add-1g").is_dir(), reason="VM captures not present")
def test_vm_memory_hot_add_1g() -> None:
    events = events_from(VM / "memory-hot-add-1g", VM_BLOCK)
    assert [e.action for e in events] == [Action.ADD] * 8 + [Action.ONLINE] * 8
    starts = sorted({e.start for e in events})
    assert starts == [0x100000000 + i * VM_BLOCK for i in range(8)]  # memory32..39, 128 MiB blocks
    assert all(e.size == VM_BLOCK for e in events)


@pytest.mark.skipif(not (VM / "memory-hot-remove-1g").is_dir(), reason="VM captures not present")
def test_vm_memory_hot_remove_1g() -> None:
    events = events_from(VM / "memory-hot-remove-1g", VM_BLOCK)
    assert [e.action for e in events] == [Action.OFFLINE] * 8 + [Action.REMOVE] * 8
    assert min(e.start for e in events) == 0x100000000


@pytest.mark.skipif(not (VM / "cpu-hot-add-online").is_dir(), reason="VM captures not present")
def test_vm_cpu_hot_add_keeps_add_and_online_only() -> None:
    # bind, cooling_device and machinecheck siblings are not CPU hotplug.
    events = events_from(VM / "cpu-hot-add-online", VM_BLOCK)
    assert [(e.action, e.cpu) for e in events] == [(Action.ADD, 2), (Action.ONLINE, 2)]


@pytest.mark.parametrize(
    "data",
    [
        b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 30,
        b"no header here\0ACTION=add\0",
        b"add@/devices/system/cpu/cpu1\0ACTION=remove\0DEVPATH=/devices/system/cpu/cpu1\0",
        b"",
    ],
)
def test_not_a_kernel_uevent(data: bytes) -> None:
    with pytest.raises(UeventError):
        parse_uevent(data)


def test_other_devpaths_and_actions_are_ignored() -> None:
    def ev(data: bytes) -> HotplugEvent | None:
        return uevent_to_event(parse_uevent(data), block_size=1 << 27, ts_ns=0)

    assert ev(b"change@/devices/system/memory/memory3\0SUBSYSTEM=memory\0") is None
    assert ev(b"add@/devices/system/memory/memory_tier1\0SUBSYSTEM=memory_tiering\0") is None
    assert ev(b"add@/devices/system/cpu/cpufreq\0SUBSYSTEM=cpu\0") is None
    mem = ev(b"online@/devices/system/memory/memory3\0SUBSYSTEM=memory\0")
    assert mem is not None and (mem.start, mem.size) == (3 << 27, 1 << 27)


# -- the source against a fake kernel endpoint --------------------------------


class FakeNetlink:
    """A datagram socketpair standing in for the kernel's netlink endpoint;
    ``overflow()`` makes the next recv fail like a full netlink socket."""

    def __init__(self) -> None:
        self.kernel, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._enobufs = 0

    def overflow(self) -> None:
        # The kernel sets sk_err: the next recv fails with ENOBUFS, then what
        # is still queued is read normally.
        self._enobufs += 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, bufsize: int, /) -> bytes:
        if self._enobufs:
            self._enobufs -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.sock.recv(bufsize)

    def close(self) -> None:
        self.sock.close()
        self.kernel.close()


async def collect(source: UeventSource, feed: list[bytes | None], fake: FakeNetlink, n: int) -> list[SourceItem]:
    send, receive = trio.open_memory_channel[SourceItem](100)
    got: list[SourceItem] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, send)
        for data in feed:
            if data is None:
                fake.overflow()
            else:
                fake.kernel.send(data)
        with trio.fail_after(5):
            while len(got) < n:
                got.append(await receive.receive())
        nursery.cancel_scope.cancel()
    return got


async def test_source_sends_events_with_reception_time() -> None:
    fake = FakeNetlink()
    clock = iter(range(100, 200))
    source = UeventSource(block_size=1 << 27, socket_factory=lambda: fake, clock_ns=lambda: next(clock))
    got = await collect(source, datagrams(HOST_CPU1), fake, 2)
    assert [(i.action, i.cpu) for i in got if isinstance(i, HotplugEvent)] == [(Action.OFFLINE, 1), (Action.ONLINE, 1)]
    assert [i.ts_ns for i in got] == [101, 103]  # each datagram is timed at reception
    assert source.messages == 4 and source.ignored == 2


async def test_enobufs_becomes_events_lost_and_reading_goes_on() -> None:
    fake = FakeNetlink()
    source = UeventSource(block_size=1 << 27, socket_factory=lambda: fake)
    offline, online = datagrams(HOST_CPU1)[1], datagrams(HOST_CPU1)[3]
    got = await collect(source, [offline, None, online], fake, 3)
    lost = [i for i in got if isinstance(i, EventsLost)]
    assert len(lost) == 1 and "ENOBUFS" in lost[0].reason and lost[0].count is None
    assert [(i.action, i.cpu) for i in got if isinstance(i, HotplugEvent)] == [(Action.OFFLINE, 1), (Action.ONLINE, 1)]
    assert source.overflows == 1


async def test_kind_filter() -> None:
    fake = FakeNetlink()
    source = UeventSource(block_size=1 << 27, kinds=frozenset({Kind.MEMORY}), socket_factory=lambda: fake)
    mem = b"online@/devices/system/memory/memory3\0ACTION=online\0DEVPATH=/devices/system/memory/memory3\0SUBSYSTEM=memory\0"
    got = await collect(source, [*datagrams(HOST_CPU1), mem], fake, 1)
    assert len(got) == 1 and isinstance(got[0], HotplugEvent) and got[0].kind is Kind.MEMORY


async def test_bpf_and_uevent_reports_of_one_change_count_once() -> None:
    """The same cpu1 offline/online from both sources (real uevent bytes, BPF
    records as the kernel writes them) reaches the batch once each."""
    from probes import ReplaySource

    bpf = [
        decode_record(RECORD.pack(10, RecordType.CPU_OFFLINE, 0, 1, 0, 0, 0, b""), block_size=None),
        decode_record(RECORD.pack(20, RecordType.CPU_ONLINE, 0, 1, 0, 0, 0, b""), block_size=None),
    ]
    uev = events_from(HOST_CPU1, 1 << 27)
    items: list[SourceItem] = [bpf[0], uev[0], bpf[1], uev[1]]  # type: ignore[list-item]
    recorder = BatchRecorder()
    stage = await run_pipeline([ReplaySource("both", items)], recorder, Policy())
    (batch,) = recorder.batches
    assert batch.events == 2 and stage.duplicates == 2


# -- memory add/remove uevents kept beside BPF (issue 12) ----------------------


# The admin's sequence as the VM tier captured it on Debian 6.1: the DIMM's 8
# blocks offlined, then the ACPI eject's 8 ``remove`` uevents.
REMOVE_1G = VM / "memory-hot-remove-1g"
needs_vm_capture = pytest.mark.skipif(not REMOVE_1G.is_dir(), reason="VM captures not present")


@needs_vm_capture
async def test_filter_beside_bpf_keeps_memory_add_remove_only() -> None:
    from probes._coverage import CPU_ADD_REMOVE, MEMORY_ADD_REMOVE

    fake = FakeNetlink()
    source = UeventSource(block_size=VM_BLOCK, changes=CPU_ADD_REMOVE | MEMORY_ADD_REMOVE, socket_factory=lambda: fake)
    assert source.kinds == frozenset(Kind)
    got = await collect(source, [*datagrams(HOST_CPU1), *datagrams(REMOVE_1G)], fake, 8)
    # cpu1 offline/online (BPF's) and the 8 offlines (BPF's) are left out;
    # the eject's removes, which BPF may not see, are kept.
    assert [(i.kind, i.action) for i in got if isinstance(i, HotplugEvent)] == [(Kind.MEMORY, Action.REMOVE)] * 8
    assert source.ignored == 4 + 8


@needs_vm_capture
async def test_a_removal_from_bpf_and_uevents_counts_once() -> None:
    """A 1 GiB DIMM removed: one try_remove_memory record from BPF (cut into
    blocks) and the kernel's 8 remove uevents reach the batch once each."""
    from probes import ReplaySource
    from probes._bpf import per_block

    record_ = decode_record(RECORD.pack(10, RecordType.MEM_REMOVE, 0, 0x100000000, 1 << 30, 0, 0, b""), block_size=VM_BLOCK)
    assert isinstance(record_, HotplugEvent)
    bpf = per_block(record_, VM_BLOCK)
    uevent = [e for e in events_from(REMOVE_1G, VM_BLOCK) if e.action is Action.REMOVE]
    items: list[SourceItem] = [*uevent[:3], *bpf, *uevent[3:]]  # uevents come while the function runs
    recorder = BatchRecorder()
    stage = await run_pipeline([ReplaySource("both", items)], recorder, Policy())
    (batch,) = recorder.batches
    assert batch.events == 8 and stage.duplicates == 8
    assert [(r.start, r.end) for r in batch.removed] == [(0x100000000, 0x140000000)]
    assert batch.urgent and set(batch.sources) == {"bpf", "uevent"}
