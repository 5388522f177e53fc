"""The harness's parsers on synthetic input (no VM, no root): a test that cannot see is worse than none."""

from __future__ import annotations

import base64
import gzip
import struct

import pytest

from testbed.harness import console_excerpt, crash_kernel, merge_ranges, parse_cpu_list, parse_trace, subtract_range, system_ram, uevent_fields
from testbed.vmcore import NT_PRSTATUS, VmcoreParseError, parse_capture_console, parse_vmcore_header


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    pad = _pad
    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


def _core(loads: list[tuple[int, int]], cpus: int) -> bytes:
    notes = b"".join(_note(b"CORE", NT_PRSTATUS, b"\1" * 336) for _ in range(cpus)) + _note(b"VMCOREINFO", 0, b"x" * 40)
    phnum = 1 + len(loads)
    note_off = 64 + 56 * phnum
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), len(notes), 0)
    for paddr, size in loads:
        ph += struct.pack("<IIQQQQQQ", 1, 7, 0x10000, 0xFFFF888000000000 + paddr, paddr, size, size, 0)
    return ehdr + ph + notes


def test_vmcore_header_counts_cpus_and_ranges() -> None:
    h = parse_vmcore_header(_core([(0x1000, 0x9F000), (0x100000, 0x3FF00000), (0x100000000, 0x40000000)], 3))
    assert h.cpu_notes == 3 and h.has_vmcoreinfo
    assert h.covers(0x100000000, 0x140000000) and not h.overlaps(0x140000000, 0x180000000)
    assert h.ranges() == [(0x1000, 0xA0000), (0x100000, 0x40000000), (0x100000000, 0x140000000)]


def test_vmcore_header_refuses_truncated_notes() -> None:
    data = _core([(0x100000, 0x1000)], 2)
    with pytest.raises(VmcoreParseError, match="PT_NOTE"):
        parse_vmcore_header(data[:-100])
    with pytest.raises(VmcoreParseError, match="not an ELF"):
        parse_vmcore_header(b"garbage" * 20)


def test_capture_console_round_trip() -> None:
    raw = _core([(0x100000, 0x1000)], 1)
    b64 = base64.encodebytes(gzip.compress(raw)).replace(b"\n", b"\r\n")
    console = b"[ 1.0] boot\r\n@@KDC-VMCORE-BEGIN %d@@\r\n" % len(raw) + b64 + b"@@KDC-VMCORE-END@@\r\n"
    assert parse_capture_console(console).raw == raw
    with pytest.raises(VmcoreParseError, match="did not run"):
        parse_capture_console(b"Kernel panic - not syncing\r\n")
    with pytest.raises(VmcoreParseError, match="truncated"):
        parse_capture_console(console.split(b"@@KDC-VMCORE-END")[0])


def test_trace_records_in_order_and_reloads_after_ready() -> None:
    lines = [
        '{"type": "header", "format": "kdump-coalesce-trace", "version": 1}',
        '{"type": "reload", "result": "ok", "backend": "kexec", "window_s": 0.9, "wall_s": 1.0}',
        '{"type": "status", "state": "ready"}',
        '{"type": "event", "t": 5, "kind": "memory", "action": "online", "start": 4294967296, "size": 134217728, "source": "bpf", "ret": 0}',
        '{"type": "batch", "seq": 1}',
        '{"type": "reload", "result": "skipped", "backend": "kexec", "window_s": 0, "wall_s": 0.01}',
        '{"type": "reload", "result": "ok", "backend": "kexec", "window_s": 0.02',
    ]
    t = parse_trace("\n".join(lines))
    assert t.ready and t.bad_lines == 1
    assert [r.result for r in t.reloads_after_ready()] == ["skipped"]
    assert len(t.batches_after_ready()) == 1 and t.sources("memory") == {"bpf"}
    assert t.events[0].start == 1 << 32 and t.events[0].cpu is None


def test_small_parsers() -> None:
    iomem = "00001000-0009fbff : System RAM\n00100000-3ffdffff : System RAM\n  26000000-35ffffff : Crash kernel\n"
    ram = merge_ranges(system_ram(iomem))
    assert subtract_range(ram, crash_kernel(iomem)) == [(0x1000, 0x9FC00), (0x100000, 0x26000000), (0x36000000, 0x3FFE0000)]
    assert parse_cpu_list("0-2,5\n") == [0, 1, 2, 5]
    assert uevent_fields(b"online@/devices/system/memory/memory32\0ACTION=online\0SUBSYSTEM=memory\0") == {
        "ACTION": "online",
        "SUBSYSTEM": "memory",
    }


def test_capture_decodes_with_a_printk_inside_a_base64_line() -> None:
    """The 6.1 capture kernel printed "tsc: Refined TSC clocksource
    calibration" in the middle of the base64 stream (a CI-like run on
    2026-12-02): the decoder cuts the kernel's record out and keeps the data."""
    import base64 as b64mod
    import gzip as gz

    from testbed.vmcore import VmcoreParseError, vmcore_bytes_from_console

    data = bytes(range(256)) * 40
    text = b64mod.b64encode(gz.compress(data, mtime=0))
    lines = [text[i : i + 76] for i in range(0, len(text), 76)]
    mid = len(lines) // 2
    cut = lines[mid][:30] + b"[    2.291815] tsc: Refined TSC clocksource calibration: 2596.108 MHz\r\n" \
        b"[    2.293232] clocksource: Switched to clocksource tsc\r\n\r\n" + lines[mid][30:]
    body = b"\r\n".join([*lines[:mid], cut, *lines[mid + 1 :]])
    console = b"boot\r\n@@KDC-VMCORE-BEGIN %d@@\r\n" % len(data) + body + b"\r\n@@KDC-VMCORE-END@@\r\n"
    assert vmcore_bytes_from_console(console) == data
    # without the record's removal the same stream is corrupt: the check can fail
    broken = console.replace(b"[    2.291815] tsc", b"#    2.291815] tsc")
    try:
        vmcore_bytes_from_console(broken)
    except VmcoreParseError:
        pass
    else:
        raise AssertionError("a line with foreign text must not decode")


def test_console_excerpt_keeps_the_first_panic_above_the_capture_kernel() -> None:
    first = [f"[    1.{i:03d}] boot line {i}" for i in range(50)]
    fault = ["[   40.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
             "[   40.000001] RIP: 0010:some_function+0x12/0x40",
             "[   40.000002] Kernel panic - not syncing: Fatal exception"]
    capture = [f"capture line {i}" for i in range(100)]
    out = console_excerpt("\n".join(first + fault + capture), lines=40)
    assert "BUG: kernel NULL pointer dereference" in out and "Fatal exception" in out
    assert out.index("BUG: kernel NULL") < out.index("capture line 60")
    assert "capture line 99" in out and "capture line 59" not in out
    # Nothing to add when there is no fault, or when it is inside the tail already.
    quiet = console_excerpt("\n".join(first + capture), lines=40)
    assert "first fault" not in quiet and "boot line 49" not in quiet
    near = console_excerpt("\n".join(capture + fault), lines=40)
    assert "first fault" not in near and near.count("Fatal exception") == 1
