"""Ring buffer record decoding and the generated BPF C text (pure, no kernel)."""

from __future__ import annotations

import re

import pytest

from probes import MemoryProbe, ProgramSpec, RecordError, decode_record, render
from ground.kexec_log import KexecCall
from ground.events import Action, Kind
from probes._bpf_program import RECORD, RECORD_FIELDS, RecordType

MIB = 1 << 20
BLOCK = 128 * MIB
PAGE = 4096


def record(
    rtype: int, *, ts: int = 1_000, ret: int = 0, arg0: int = 0, arg1: int = 0, pid: int = 0, syscall: int = 0, comm: bytes = b""
) -> bytes:
    return RECORD.pack(ts, rtype, ret, arg0, arg1, pid, syscall, comm)


def test_record_layout_matches_the_c_struct() -> None:
    # u64, u32, s32, u64, u64, u32, u32, char[16]: no padding, 56 bytes.
    assert RECORD.size == 56
    text = render(ProgramSpec(cpuhp_online=236, cpuhp_teardown=144))
    struct_body = text[text.index("struct kc_record {") : text.index("};", text.index("struct kc_record {"))]
    names = re.findall(r"\b(\w+)(?:\[16\])?;", struct_body)
    assert names == [name for name, *_ in RECORD_FIELDS]


def test_cpu_online_and_offline() -> None:
    ev = decode_record(record(RecordType.CPU_ONLINE, ts=42, arg0=1), block_size=BLOCK)
    assert not isinstance(ev, KexecCall)
    assert (ev.kind, ev.action, ev.cpu, ev.ts_ns, ev.source, ev.ret) == (Kind.CPU, Action.ONLINE, 1, 42, "bpf", None)
    ev = decode_record(record(RecordType.CPU_OFFLINE, arg0=7), block_size=None)
    assert not isinstance(ev, KexecCall)
    assert (ev.action, ev.cpu, ev.changes_state) == (Action.OFFLINE, 7, True)


def test_cpu_failure_keeps_its_code_and_changes_nothing() -> None:
    ev = decode_record(record(RecordType.CPU_OFFLINE, arg0=1, ret=-11), block_size=BLOCK)
    assert not isinstance(ev, KexecCall)
    assert ev.failed and ev.ret == -11 and not ev.changes_state


def test_memory_return_is_widened_to_whole_blocks() -> None:
    # memmap_on_memory: online_pages() skips the block's own memmap pages.
    pfn = (33 * BLOCK) // PAGE + 512
    nr = BLOCK // PAGE - 512
    ev = decode_record(record(RecordType.MEM_ONLINE, arg0=pfn, arg1=nr), block_size=BLOCK, page_size=PAGE)
    assert not isinstance(ev, KexecCall)
    assert (ev.kind, ev.action, ev.start, ev.size, ev.ret) == (Kind.MEMORY, Action.ONLINE, 33 * BLOCK, BLOCK, None)


def test_memory_entry_has_no_return_code_and_failure_has_one() -> None:
    going = decode_record(record(RecordType.MEM_GOING_OFFLINE, arg0=0x8000, arg1=0x8000), block_size=BLOCK, page_size=PAGE)
    assert not isinstance(going, KexecCall)
    assert going.action is Action.GOING_OFFLINE and going.ret is None
    failed = decode_record(record(RecordType.MEM_OFFLINE, arg0=0x8000, arg1=0x8000, ret=-16), block_size=BLOCK, page_size=PAGE)
    assert not isinstance(failed, KexecCall)
    assert failed.failed and failed.ret == -16 and not failed.changes_state
    assert failed.memory_range.start == 0x8000 * PAGE


def test_memory_without_block_size_keeps_exact_pages() -> None:
    ev = decode_record(record(RecordType.MEM_ONLINE, arg0=10, arg1=3), block_size=None, page_size=PAGE)
    assert not isinstance(ev, KexecCall)
    assert (ev.start, ev.size) == (10 * PAGE, 3 * PAGE)


def test_kexec_call() -> None:
    raw = record(RecordType.KEXEC_CALL, ts=2_500, arg0=0x3E0001, arg1=1_000, pid=812, syscall=0, comm=b"kexec\0garbage")
    call = decode_record(raw, block_size=BLOCK)
    assert call == KexecCall("kexec_load", 812, "kexec", 0x3E0001, 1_000, 2_500, 0)
    assert call.on_crash and call.window_s == pytest.approx(1.5e-6)
    file_load = decode_record(record(RecordType.KEXEC_CALL, arg0=0x2, syscall=1, ret=-1), block_size=BLOCK)
    assert isinstance(file_load, KexecCall) and file_load.syscall == "kexec_file_load" and file_load.on_crash


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\0" * 10, "record of 10 bytes"),
        (RECORD.pack(1, 99, 0, 0, 0, 0, 0, b""), "unknown record type 99"),
        (RECORD.pack(1, RecordType.KEXEC_CALL, 0, 0, 0, 0, 5, b""), "unknown kexec syscall 5"),
        (RECORD.pack(1, RecordType.MEM_ONLINE, 0, 4, 0, 0, 0, b""), "nr_pages=0"),
    ],
)
def test_bad_records_raise_record_error(raw: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode_record(raw, block_size=BLOCK)


def test_program_text_holds_only_what_was_planned() -> None:
    cpu_only = render(ProgramSpec(cpuhp_online=236, cpuhp_teardown=144))
    assert "RAW_TRACEPOINT_PROBE(cpuhp_exit)" in cpu_only
    assert "#define KC_CPUHP_ONLINE 236" in cpu_only and "#define KC_CPUHP_TEARDOWN_CPU 144" in cpu_only
    assert "PROBE(online_pages" not in cpu_only and "kprobe__" not in cpu_only and "TRACEPOINT_PROBE(syscalls" not in cpu_only
    assert cpu_only.count("BPF_RINGBUF_OUTPUT") == 1 and "BPF_PERCPU_ARRAY(drops" in cpu_only

    fentry = render(ProgramSpec(memory=MemoryProbe.FENTRY, memory_params={"online_pages": 4, "offline_pages": 2}))
    assert "KRETFUNC_PROBE(online_pages, unsigned long pfn, unsigned long nr_pages, void *arg2, void *arg3, int ret)" in fentry
    assert "KRETFUNC_PROBE(offline_pages, unsigned long pfn, unsigned long nr_pages, int ret)" in fentry
    assert "kprobe__" not in fentry and "cpuhp_exit" not in fentry

    kprobe = render(ProgramSpec(memory=MemoryProbe.KPROBE, kexec_syscalls=((0, "kexec_load"),)))
    assert "int kretprobe__offline_pages(struct pt_regs *ctx)" in kprobe and "KFUNC_PROBE" not in kprobe
    assert "TRACEPOINT_PROBE(syscalls, sys_exit_kexec_load)" in kprobe
    assert "kexec_file_load" not in kprobe


def test_program_spec_rejects_what_cannot_compile() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ProgramSpec(ringbuf_pages=3)
    with pytest.raises(ValueError, match="parameter count"):
        ProgramSpec(memory=MemoryProbe.FENTRY)
    with pytest.raises(ValueError, match="go together"):
        ProgramSpec(cpuhp_online=236)
