"""The live sources on this host's real kernel: BCC, cpuhp tracepoints,
netlink uevents, real cpu1 offline/online.

Every test that takes cpu1 offline puts it back online whatever happens
(the ``cpu1`` fixture), and holds /run/lock/kdump-coalesce-cpu-hotplug.lock
so that two test runs on one host do not interleave their hotplug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from coalescer import BatchRecorder, Policy, run_pipeline
from ground.errors import UnavailableError
from probes import BpfSource, MemoryProbe, ProgramSpec, UeventSource, open_sources, plan_program, render
from probes._bpf import import_bcc
from probes._bpf_program import MEMORY_FUNCS, PRESENCE_FUNCS
from probes._coverage import CPU_ADD_REMOVE, CPU_ONLINE_OFFLINE, MEMORY_ADD_REMOVE, MEMORY_ONLINE_OFFLINE
from ground.kexec_log import KexecCallLog
from ground.events import Action, EventsLost, HotplugEvent, Kind, SourceItem
from probes import _sysfs
from probes._bpf_syscall import probe_fentry, probe_kprobe

pytestmark = pytest.mark.kernel

CPU1 = Path("/sys/devices/system/cpu/cpu1/online")
REPO = Path(__file__).resolve().parent.parent.parent
FAST = Policy(quiet=0.3, max_delay=5.0, urgent_quiet=0.1, urgent_max_delay=2.0)




def set_cpu1(value: str) -> None:
    CPU1.write_text(value + "\n")


async def cycle_cpu1(pause: float = 0.0) -> None:
    await trio.to_thread.run_sync(set_cpu1, "0")
    await trio.sleep(pause)
    await trio.to_thread.run_sync(set_cpu1, "1")


async def collect_cpu1(sources: list[BpfSource | UeventSource], pause: float = 0.0) -> list[HotplugEvent]:
    """Run ``sources``, cycle cpu1 once, return the cpu1 events they sent."""
    send, receive = trio.open_memory_channel[SourceItem](1000)
    got: list[HotplugEvent] = []
    async with trio.open_nursery() as nursery:
        for source in sources:
            await nursery.start(source.run, send.clone())
        send.close()
        await cycle_cpu1(pause)
        with trio.move_on_after(1.5):  # events arrive within ms; wait for strays
            async for item in receive:
                if isinstance(item, HotplugEvent) and item.kind is Kind.CPU and item.cpu == 1:
                    got.append(item)
        nursery.cancel_scope.cancel()
    return got


def bpf_cpu_source() -> BpfSource:
    plan = plan_program(want_cpu=True, want_memory=False, want_kexec=False)
    assert plan.probes_cpu, plan.notes
    source = BpfSource(plan, block_size=_sysfs.block_size_bytes())
    source.load()
    return source


async def test_bcc_program_compiles_and_loads_here() -> None:
    plan = plan_program()
    source = BpfSource(plan, kexec_log=KexecCallLog(), block_size=_sysfs.block_size_bytes())
    source.load()  # real clang + verifier + attach; raises UnavailableError if refused
    try:
        assert "RAW_TRACEPOINT_PROBE(cpuhp_exit)" in source.text
        assert any("CPUHP_ONLINE=" in note for note in source.plan.notes)
        # memory add/remove: planned where the kernel takes it, else said why
        # (kprobes compiled out and fentry refused here: a clean fallback)
        notes = " ".join(source.plan.notes)
        if source.plan.probes_presence:
            assert "KRETFUNC_PROBE(try_remove_memory" in source.text or "kretprobe__try_remove_memory" in source.text
        else:
            assert "bpf: memory add/remove: unavailable: kprobes/fentry missing" in notes
            assert "try_remove_memory" not in source.text
    finally:
        source.close()


async def test_bpf_source_reports_cpu1_offline_then_online(cpu1: Path) -> None:
    before = time.monotonic_ns()
    events = await collect_cpu1([bpf_cpu_source()])
    after = time.monotonic_ns()
    assert [(e.action, e.source, e.ret) for e in events] == [(Action.OFFLINE, "bpf", None), (Action.ONLINE, "bpf", None)]
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC: the kernel's times fall inside ours
    assert before < events[0].ts_ns < events[1].ts_ns < after


async def test_uevent_source_reports_cpu1_offline_then_online(cpu1: Path) -> None:
    source = UeventSource(block_size=_sysfs.block_size_bytes() or 1 << 27)
    events = await collect_cpu1([source])
    assert [(e.action, e.source) for e in events] == [(Action.OFFLINE, "uevent"), (Action.ONLINE, "uevent")]


async def test_both_sources_through_the_coalescer_give_one_batch_per_change(cpu1: Path) -> None:
    sources = [bpf_cpu_source(), UeventSource(block_size=_sysfs.block_size_bytes() or 1 << 27)]
    recorder = BatchRecorder()
    async with trio.open_nursery() as nursery:
        stage = await nursery.start(run_pipeline, sources, recorder, FAST)
        await cycle_cpu1(pause=0.6)  # > urgent_quiet: the offline batch closes first
        await trio.sleep(1.0)
        stage.stop_sources()
    cpu1_batches = [b for b in recorder.batches if 1 in b.cpus_offline + b.cpus_online]
    assert [(b.cpus_offline, b.cpus_online, b.events) for b in cpu1_batches] == [((1,), (), 1), ((), (1,), 1)]
    assert cpu1_batches[0].urgent and cpu1_batches[0].reason == "urgent_quiet"
    assert stage.duplicates == 2  # the uevent copies of both changes


def kernel_can_probe(funcs: tuple[str, ...]) -> bool:
    btf = _sysfs.load_vmlinux_btf()
    return all(probe_fentry(f, btf.func_id(f) if btf else None) for f in funcs) or all(probe_kprobe(f) for f in funcs)


async def test_memory_probes_unavailable_here_and_auto_uses_uevents() -> None:
    plan = plan_program(want_cpu=False, want_memory=True, want_kexec=False)
    selection = open_sources("auto", kexec_log=KexecCallLog())
    try:
        uevent = [s for s in selection.sources if isinstance(s, UeventSource)]
        # Every configuration keeps the add/remove uevents of both kinds.
        assert len(uevent) == 1 and CPU_ADD_REMOVE | MEMORY_ADD_REMOVE <= uevent[0].changes
        assert selection.coverage["cpu add/remove"] == ("uevent",)
        if kernel_can_probe(MEMORY_FUNCS):  # a production kernel: BPF sees online/offline itself
            assert plan.spec.memory is not MemoryProbe.NONE
            assert not MEMORY_ONLINE_OFFLINE & uevent[0].changes
        else:  # this host: no kprobes, fentry refused
            assert plan.spec.memory is MemoryProbe.NONE
            assert plan.memory_reason.startswith("kprobes/fentry missing")
            assert "bpf: memory online/offline: unavailable: kprobes/fentry missing" in " ".join(plan.notes)
            assert MEMORY_ONLINE_OFFLINE <= uevent[0].changes
            assert "auto: bpf for cpu online/offline" in selection.notes
            assert selection.coverage["memory online/offline"] == ("uevent",)
        if kernel_can_probe(PRESENCE_FUNCS):
            assert plan.spec.presence is not MemoryProbe.NONE
            assert selection.coverage["memory add/remove"] == ("bpf", "uevent")
        else:  # this host: memory add/remove from uevents, said so
            assert plan.spec.presence is MemoryProbe.NONE
            assert "bpf: memory add/remove: unavailable: kprobes/fentry missing" in " ".join(plan.notes)
            assert selection.coverage["memory add/remove"] == ("uevent",)
        note = [n for n in selection.notes if n.startswith("auto: uevent for ")]
        assert len(note) == 1 and "cpu add/remove" in note[0] and "memory add/remove" in note[0]
    finally:
        for s in selection.sources:
            s.close()  # type: ignore[attr-defined]


async def test_source_bpf_still_takes_cpu_add_remove_from_uevents_or_fails_loudly() -> None:
    try:
        selection = open_sources("bpf", kexec_log=KexecCallLog())
    except UnavailableError as exc:  # this host: BPF cannot see memory online/offline
        assert not kernel_can_probe(MEMORY_FUNCS)
        assert str(exc).startswith("--source bpf for memory online/offline")
        selection = open_sources("bpf", kexec_log=KexecCallLog(), kinds=frozenset({Kind.CPU}))
    try:
        (uevent,) = [s for s in selection.sources if isinstance(s, UeventSource)]
        assert CPU_ADD_REMOVE <= uevent.changes and not CPU_ONLINE_OFFLINE & uevent.changes
        assert selection.coverage["cpu online/offline"] == ("bpf",)
    finally:
        for s in selection.sources:
            s.close()  # type: ignore[attr-defined]


async def test_memory_probe_c_compiles_and_passes_the_verifier_here() -> None:
    """This kernel cannot attach kprobes or fentry, but it can compile (BCC,
    clang, these headers) and verify the kprobe variant of every memory probe,
    online/offline and add/remove: the functions are renamed so that BCC does
    not auto-attach them, then loaded as kprobe programs (verifier only)."""
    bcc = import_bcc()
    text = render(ProgramSpec(memory=MemoryProbe.KPROBE, presence=MemoryProbe.KPROBE))
    text = text.replace("int kprobe__", "int kc_check_kprobe__").replace("int kretprobe__", "int kc_check_kretprobe__")
    bpf = bcc.BPF(text=text.encode())
    try:
        names = [f"kc_check_{kind}__{func}" for func in (*MEMORY_FUNCS, *PRESENCE_FUNCS) for kind in ("kprobe", "kretprobe")]
        for name in names:
            fn = bpf.load_func(name.encode(), bcc.BPF.KPROBE)
            assert fn.fd >= 0
    finally:
        bpf.cleanup()


async def test_memory_probe_fexit_c_compiles_here() -> None:
    """The fexit variant (BTF parameter counts from this kernel) goes through
    BCC's clang with these headers; this kernel then refuses the load
    (EPERM: tracing programs are refused here), which is the clean fallback
    that plan_program reports.  A kernel that takes it attaches for real."""
    from probes._bpf import compile_program

    btf = _sysfs.load_vmlinux_btf()
    assert btf is not None
    params = {f: btf.func_param_count(f) for f in (*MEMORY_FUNCS, *PRESENCE_FUNCS)}
    assert all(c is not None for c in params.values()), params
    spec = ProgramSpec(memory=MemoryProbe.FENTRY, presence=MemoryProbe.FENTRY, memory_params=params)  # type: ignore[arg-type]
    try:
        compiled = compile_program(render(spec))
    except UnavailableError as exc:
        assert "compile" not in exc.reason.lower(), exc.reason  # refused at load, not at compile
        assert not kernel_can_probe(PRESENCE_FUNCS)
    else:
        compiled.cleanup()


def stand_in_kexec_plan(pages: int = 256) -> tuple[BpfSource, KexecCallLog]:
    """This host's kernel has no kexec syscalls to trace (no CONFIG_KEXEC), so
    the kexec-log path is proven on pipe2(2), which has the same tracefs
    syscall events and a ``flags`` argument: same C, same decoder, same log."""
    plan = plan_program(want_cpu=False, want_memory=False, kexec_syscalls=((0, "pipe2"),), ringbuf_pages=pages)
    if not plan.probes_kexec:
        pytest.fail("syscalls:sys_enter_pipe2 not available: " + "; ".join(plan.notes))
    log = KexecCallLog()
    source = BpfSource(plan, kexec_log=log, block_size=None)
    source.load()
    return source, log


async def test_kexec_log_is_filled_from_syscall_tracepoints() -> None:
    source, log = stand_in_kexec_plan()
    send, _receive = trio.open_memory_channel[SourceItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, send)
        assert log.active
        before = time.monotonic_ns()
        r, w = os.pipe2(os.O_CLOEXEC)
        os.close(r)
        os.close(w)
        with trio.fail_after(5):
            while not [c for c in log.calls() if c.pid == os.getpid()]:
                await log.wait_changed()
        nursery.cancel_scope.cancel()
    assert not log.active  # detached
    (call,) = [c for c in log.calls() if c.pid == os.getpid()]
    assert call.syscall == "kexec_load"  # enum value 0, standing in
    assert call.flags == os.O_CLOEXEC and call.ret == 0
    assert before <= call.enter_ns <= call.exit_ns <= time.monotonic_ns()
    assert call.comm == Path("/proc/self/comm").read_text().strip()


async def test_ring_buffer_overflow_becomes_events_lost() -> None:
    # One page holds 4096 / (56 + 8 header) = 64 records; 300 calls are made
    # before the source gets to read (it only runs when this task yields).
    source, log = stand_in_kexec_plan(pages=1)
    send, receive = trio.open_memory_channel[SourceItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, send)
        for _ in range(300):
            r, w = os.pipe2(os.O_CLOEXEC)
            os.close(r)
            os.close(w)
        with trio.fail_after(5):
            lost = await receive.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(lost, EventsLost) and lost.source == "bpf" and lost.reason == "BPF ring buffer full"
    mine = [c for c in log.calls() if c.pid == os.getpid()]
    assert lost.count is not None and lost.count >= 300 - 64
    assert len(mine) <= 64 and len(mine) + lost.count >= 300


async def test_uevent_socket_overflow_is_reported(cpu1: Path) -> None:
    # The smallest receive buffer the kernel grants (SOCK_MIN_RCVBUF) holds
    # a couple of CPU uevents; two cycles queue eight while nobody reads.
    source = UeventSource(block_size=_sysfs.block_size_bytes() or 1 << 27, rcvbuf=1)
    for _ in range(2):
        set_cpu1("0")
        set_cpu1("1")
    send, receive = trio.open_memory_channel[SourceItem](100)
    got: list[SourceItem] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, send)
        with trio.move_on_after(1.0):
            async for item in receive:
                got.append(item)
        nursery.cancel_scope.cancel()
    lost = [i for i in got if isinstance(i, EventsLost)]
    assert lost and "ENOBUFS" in lost[0].reason
    assert source.overflows >= 1


def test_trace_plain_output_replays_to_the_same_batches(cpu1: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    policy = ["--quiet", "0.3", "--urgent-quiet", "0.1", "--max-delay", "5", "--urgent-max-delay", "2"]
    cmd = [sys.executable, "-m", "kdump_coalesce.cli", "trace", "--plain", "--output", str(out), *policy]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # Sources are attached before the notes are written to the file.
        while not (out.exists() and '"type":"note"' in out.read_text()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "trace did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        set_cpu1("0")
        time.sleep(0.8)
        set_cpu1("1")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: flush and exit cleanly
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("event ") and " cpu=1 " in line]
    assert [line.split(" action=")[1].split()[0] for line in lines] == ["offline", "online"]
    assert all(line.endswith("source=bpf") for line in lines)

    recorded = [json.loads(line) for line in out.read_text().splitlines() if '"type":"batch"' in line]
    replay = subprocess.run(
        [sys.executable, "-m", "kdump_coalesce.cli", "replay", str(out), "--speed", "1", "--json", *policy],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )
    replayed = [json.loads(line) for line in replay.stdout.splitlines()]
    keys = ("events", "cpus_offline", "cpus_online", "online", "offline", "urgent", "rescan")
    assert [{k: b[k] for k in keys} for b in replayed] == [{k: b[k] for k in keys} for b in recorded]
    assert [(b["cpus_offline"], b["cpus_online"]) for b in recorded] == [([1], []), ([], [1])]


def test_vmlinux_btf_index_matches_a_plain_decode() -> None:
    """probes._btf's one-pass index (names compared as string offsets) against
    a plain decoder written from include/uapi/linux/btf.h: every FUNC's id and
    parameter count, for the probed functions and every 97th FUNC of this
    kernel; and enum cpuhp_state against the kernel's own states file."""
    import struct

    data = Path("/sys/kernel/btf/vmlinux").read_bytes()
    _magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    fixed = {1: 4, 3: 12, 14: 4, 17: 4}
    funcs: dict[str, tuple[int, int]] = {}  # name -> (id, proto id), first wins
    protos: dict[int, int] = {}
    pos, type_id = 0, 1
    while pos < len(types):
        name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        name = strings[name_off : strings.index(b"\0", name_off)].decode()
        if kind == 12:
            funcs.setdefault(name, (type_id, size_or_type))
        elif kind == 13:
            protos[type_id] = vlen
        pos += 12 + fixed.get(kind, 0) + per_member.get(kind, 0) * vlen
        type_id += 1
    btf = _sysfs.load_vmlinux_btf()
    assert btf is not None
    names = [*MEMORY_FUNCS, *PRESENCE_FUNCS, *sorted(funcs)[::97]]
    got = {n: (btf.func_id(n), btf.func_param_count(n)) for n in names}
    want = {n: (funcs[n][0], protos.get(funcs[n][1])) for n in names}
    assert got == want
    states = _sysfs.cpuhp_states("/nonexistent", btf=btf)
    by_file = _sysfs.cpuhp_states("/", btf=None)
    assert states is not None and by_file is not None
    assert (states.online, states.teardown) == (by_file.online, by_file.teardown)
