"""The kexec_load(2) declaration: struct packing and errno mapping (the call itself needs a kexec kernel)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from ground.ranges import PhysRange
from updater.fastpath import KexecLoadError, KexecSegment, Segment, SegmentKind, SegmentSet, segment_array
from updater.fastpath import _kexec_syscall
from updater.fastpath._image import VerifiedSegmentSet


def test_struct_kexec_segment_layout() -> None:
    assert ctypes.sizeof(KexecSegment) == 32
    assert [getattr(KexecSegment, f).offset for f in ("buf", "bufsz", "mem", "memsz")] == [0, 8, 16, 24]


def test_segment_array_points_at_the_buffers_without_copying() -> None:
    segs = [
        Segment(b"\x01\x02\x03header", 0x2B000000, 0x4000, SegmentKind.ELFCOREHDR),
        Segment(b"", 0x2B004000, 0x9F000, SegmentKind.BACKUP),
    ]
    array = segment_array(segs)
    assert len(array) == 2
    assert ctypes.string_at(array[0].buf, array[0].bufsz) == segs[0].buf
    assert (array[0].mem, array[0].memsz, array[0].bufsz) == (0x2B000000, 0x4000, 9)
    assert array[1].buf is None and array[1].bufsz == 0 and array[1].memsz == 0x9F000
    raw = bytes(array)
    assert len(raw) == 64
    assert raw[8:16] == (9).to_bytes(8, "little") and raw[16:24] == (0x2B000000).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (errno.EPERM, "CAP_SYS_BOOT"),
        (errno.EBUSY, "kexec lock"),
        (errno.EADDRNOTAVAIL, "outside the crash kernel region"),
        (errno.ENOSYS, "CONFIG_KEXEC"),
    ],
)
def test_errno_becomes_a_typed_one_line_error(err: int, text: str) -> None:
    e = KexecLoadError(err)
    assert e.errno == err
    assert text in str(e) and errno.errorcode[err] in str(e)
    assert "\n" not in str(e)


def test_failed_call_raises_with_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []

    def fake_syscall(*args: object) -> int:
        calls.append(tuple(a.value if hasattr(a, "value") else a for a in args))  # type: ignore[attr-defined]
        ctypes.set_errno(errno.EBUSY)
        return -1

    monkeypatch.setattr(_kexec_syscall, "_libc_syscall", lambda: fake_syscall)
    monkeypatch.setattr(_kexec_syscall.platform, "machine", lambda: "x86_64")
    seg = Segment(b"abc", 0x2B000000, 0x1000, SegmentKind.PURGATORY)
    ss = SegmentSet((seg,), 0x2B000000, 0x003E0001, PhysRange.from_inclusive(0x2B000000, 0x2BFFFFFF), b"")
    with pytest.raises(KexecLoadError, match="EBUSY"):
        _kexec_syscall.kexec_load_crash(VerifiedSegmentSet(ss, b"", "full", 0.0))
    assert calls[0][0] == 246 and calls[0][1] == 0x2B000000 and calls[0][2] == 1 and calls[0][4] == 0x003E0001
