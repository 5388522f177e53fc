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


# -- memory add/remove: add_memory_resource / try_remove_memory ----------------

GIB = 1 << 30


def test_presence_records_are_byte_ranges_with_their_return_code() -> None:
    # arg0/arg1 are bytes for add/remove (res->start, length), pages otherwise.
    add = decode_record(record(RecordType.MEM_ADD, ts=7, arg0=4 * GIB, arg1=GIB), block_size=BLOCK, page_size=PAGE)
    assert not isinstance(add, KexecCall)
    assert (add.kind, add.action, add.start, add.size, add.ret, add.ts_ns) == (Kind.MEMORY, Action.ADD, 4 * GIB, GIB, None, 7)
    assert add.changes_state
    refused = decode_record(record(RecordType.MEM_REMOVE, arg0=4 * GIB, arg1=GIB, ret=-16), block_size=BLOCK)
    assert not isinstance(refused, KexecCall)
    assert refused.action is Action.REMOVE and refused.ret == -16 and not refused.changes_state
    with pytest.raises(RecordError, match="length=0"):
        decode_record(record(RecordType.MEM_REMOVE, arg0=4 * GIB, arg1=0), block_size=BLOCK)


def test_a_dimm_removal_is_cut_into_blocks_like_its_uevents() -> None:
    from probes._bpf import per_block

    removed = decode_record(record(RecordType.MEM_REMOVE, ts=9, arg0=4 * GIB, arg1=GIB), block_size=BLOCK)
    assert not isinstance(removed, KexecCall)
    blocks = per_block(removed, BLOCK)
    assert [(e.start, e.size) for e in blocks] == [(4 * GIB + i * BLOCK, BLOCK) for i in range(8)]
    assert {(e.action, e.ts_ns, e.source, e.ret) for e in blocks} == {(Action.REMOVE, 9, "bpf", None)}
    # A refusal has no uevent to match: one event, counted as one failure.
    refused = decode_record(record(RecordType.MEM_REMOVE, arg0=4 * GIB, arg1=GIB, ret=-16), block_size=BLOCK)
    assert not isinstance(refused, KexecCall)
    assert per_block(refused, BLOCK) == [refused]
    # online/offline records are per block already; no block size, no cutting.
    online = decode_record(record(RecordType.MEM_ONLINE, arg0=0x8000, arg1=0x8000), block_size=BLOCK, page_size=PAGE)
    assert not isinstance(online, KexecCall)
    assert per_block(online, BLOCK) == [online] and per_block(removed, None) == [removed]


def test_presence_fexit_text() -> None:
    spec = ProgramSpec(
        presence=MemoryProbe.FENTRY, memory_params={"add_memory_resource": 3, "try_remove_memory": 2}
    )
    text = render(spec)
    assert "KRETFUNC_PROBE(add_memory_resource, int nid, struct resource *res, void *arg2, int ret)" in text
    assert "KRETFUNC_PROBE(try_remove_memory, u64 start, u64 size, int ret)" in text
    assert "kc_memory(KC_MEM_ADD, start, size, ret);" in text and "kc_memory(KC_MEM_REMOVE, start, size, ret);" in text
    assert "#include <linux/ioport.h>" in text and "__builtin_offsetof(struct resource, end)" in text
    # return only (the code decides), no entry probe, nothing of online/offline
    assert "KFUNC_PROBE(" not in text and "online_pages" not in text and "kprobe__" not in text
    assert "static __always_inline void kc_memory(" in text  # shared with online/offline
    assert "#define KC_MEM_ADD 8" in text and "#define KC_MEM_REMOVE 9" in text


def test_presence_kprobe_text_keeps_its_own_argument_map() -> None:
    text = render(ProgramSpec(memory=MemoryProbe.KPROBE, presence=MemoryProbe.KPROBE))
    for probe in ("kprobe__add_memory_resource", "kretprobe__add_memory_resource", "kprobe__try_remove_memory", "kretprobe__try_remove_memory"):
        assert f"int {probe}(struct pt_regs *ctx" in text
    # add_memory_resource() onlines its blocks (online_pages) on the same
    # thread before it returns: the two entry probes keep separate maps.
    assert "BPF_HASH(memory_args," in text and "BPF_HASH(presence_args," in text
    assert text.count("static __always_inline void kc_memory(") == 1
    presence_only = render(ProgramSpec(presence=MemoryProbe.KPROBE))
    assert "BPF_HASH(memory_args," not in presence_only and "kprobe__online_pages" not in presence_only


def test_presence_fexit_needs_parameter_counts() -> None:
    with pytest.raises(ValueError, match="add_memory_resource needs its parameter count"):
        ProgramSpec(presence=MemoryProbe.FENTRY, memory_params={"try_remove_memory": 2})
    assert not ProgramSpec(presence=MemoryProbe.KPROBE).empty


def test_a_refused_presence_probe_is_dropped_first_and_said() -> None:
    from ground.errors import UnavailableError
    from probes import BpfPlan, BpfSource

    compiled: list[str] = []

    def compile_fn(text: str) -> object:
        compiled.append(text)
        if "try_remove_memory" in text:
            raise UnavailableError("bpf program", "cannot attach kprobe, probe entry may not exist")
        return object()

    spec = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144, memory=MemoryProbe.KPROBE, presence=MemoryProbe.KPROBE)
    source = BpfSource(BpfPlan(spec, ["bpf: cpu: ..."]), block_size=BLOCK, compile_fn=compile_fn)
    source._compile_with_fallback()
    assert len(compiled) == 2 and "kprobe__online_pages" in compiled[1]  # online/offline kept
    assert source.plan.spec.presence is MemoryProbe.NONE and source.plan.probes_memory and source.plan.probes_cpu
    assert source.plan.presence_reason.startswith("kprobes/fentry missing (kprobe refused: cannot attach")
    assert source.plan.notes[-1].startswith("bpf: memory add/remove: unavailable: ")
    assert (Kind.MEMORY, Action.REMOVE) not in source.plan.changes
    assert (Kind.MEMORY, Action.OFFLINE) in source.plan.changes
