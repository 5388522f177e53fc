"""Prepare once, build per batch, verify before every load."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from ground.errors import InputError
from ground.ranges import PhysRange
from updater.fastpath import (
    CONTROL_PAGES,
    KEXEC_CRASH_FLAGS,
    CaptureKernel,
    DigestMismatchError,
    ElfcorehdrOverflowError,
    FastPathInputs,
    IomemRange,
    PrefixDigest,
    PurgatoryError,
    RangeKind,
    Segment,
    SegmentKind,
    SegmentLayoutError,
    SegmentSet,
    VerificationError,
    parse_bzimage,
    parse_purgatory,
    parse_sha256_regions,
    prepare,
    recompute_digest,
)


from tests.fixtures.fastpath import synth
CRASH = PhysRange.from_inclusive(0x2B000000, 0x2BFFFFFF)  # 16 MiB
IOMEM = (
    IomemRange(PhysRange.from_inclusive(0x0, 0xFFF), RangeKind.RESERVED),
    IomemRange(PhysRange.from_inclusive(0x1000, 0x9FBFF), RangeKind.SYSTEM_RAM),
    IomemRange(PhysRange.from_inclusive(0x9FC00, 0x9FFFF), RangeKind.RESERVED),
    IomemRange(PhysRange.from_inclusive(0x100000, 0x7FFDFFFF), RangeKind.SYSTEM_RAM),
    IomemRange(PhysRange.from_inclusive(0x7FFE0000, 0x7FFEFFFF), RangeKind.ACPI_TABLES),
    IomemRange(PhysRange.from_inclusive(0x7FFF0000, 0x7FFFFFFF), RangeKind.ACPI_NVS),
)


def make_inputs(**overrides: object) -> FastPathInputs:
    fields: dict[str, object] = dict(
        capture=CaptureKernel(
            parse_bzimage(synth.build_bzimage(payload_size=300_000, init_size=0x100000), "synthetic-bzImage"),
            bytes(range(256)) * 1000,
            "console=ttyS0 nr_cpus=1 irqpoll reset_devices",
        ),
        purgatory=parse_purgatory(synth.build_purgatory(), "synthetic-purgatory"),
        crash_regions=(CRASH,),
        iomem=IOMEM,
        boot_params=synth.boot_params(),
        elfcorehdr_capacity=16 * 1024,
        rng_seed=bytes(range(32)),
    )
    fields.update(overrides)
    return FastPathInputs(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def image():  # type: ignore[no-untyped-def]
    return prepare(make_inputs())


def purgatory_of(ss: SegmentSet) -> Segment:
    return ss.by_kind(SegmentKind.PURGATORY)


def test_layout_is_inside_the_region_with_the_header_on_top(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(5))
    mems = [s.mem for s in ss.segments]
    assert mems == sorted(mems)
    assert all(CRASH.start <= s.mem and s.end <= CRASH.end for s in ss.segments)
    assert ss.segments[-1].kind is SegmentKind.ELFCOREHDR  # last in hash order
    assert ss.segments[-1].end == CRASH.end
    assert ss.flags == KEXEC_CRASH_FLAGS == 0x003E0001
    kinds = {s.kind for s in ss.segments}
    assert kinds == set(SegmentKind)
    k = ss.by_kind(SegmentKind.KERNEL)
    assert k.mem % 0x200000 == 0 and k.memsz == 0x100000
    free = CRASH.size - sum(s.memsz for s in ss.segments)
    assert free >= CONTROL_PAGES * 4096


def test_digest_and_regions_match_an_independent_recomputation(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(7))
    purg = purgatory_of(ss)
    hashed = [s for s in ss.segments if s is not purg]
    assert ss.digest == recompute_digest(hashed)
    view = image.view
    assert purg.buf[view.sha256_digest : view.sha256_digest + 32] == ss.digest
    regions = parse_sha256_regions(purg.buf[view.sha256_regions : view.sha256_regions + 256])
    assert regions == [(s.mem, s.memsz) for s in hashed]
    v = image.verify(ss)
    assert v.mode == "full" and v.digest == ss.digest
    assert image.verify(ss, reuse_attested_prefix=True).mode == "attested-prefix"


def test_purgatory_symbols_point_at_the_segments(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(3))
    purg = purgatory_of(ss).buf
    view = image.view
    regs = struct.unpack_from("<17Q", purg, view.entry64_regs)
    assert regs[16] == ss.by_kind(SegmentKind.KERNEL).mem + 0x200  # rip: startup_64
    assert regs[4] == ss.by_kind(SegmentKind.SETUP).mem  # rsi: boot_params
    assert regs[6] == view.stack_end  # rsp
    assert regs[1] == 0  # rbx: bootstrap processor
    assert struct.unpack_from("<Q", purg, view.backup_start)[0] == ss.by_kind(SegmentKind.BACKUP).mem
    assert struct.unpack_from("<Q", purg, view.backup_src_start)[0] == 0x1000
    assert struct.unpack_from("<Q", purg, view.backup_src_size)[0] == 0x9EC00
    assert purg[view.panic_kernel] == 1
    assert ss.entry == image.layout.entry == purgatory_of(ss).mem + 16
    # The header's low-memory PT_LOAD must point at the backup (the elfcorehdr builder reads this).
    assert image.layout.backup.start == ss.by_kind(SegmentKind.BACKUP).mem


def test_setup_segment_names_the_header_slot(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(3))
    setup = ss.by_kind(SegmentKind.SETUP)
    ptr = struct.unpack_from("<I", setup.buf, 0x228)[0]
    cmdline = setup.buf[ptr - setup.mem :].split(b"\0")[0].decode()
    assert cmdline == image.layout.cmdline
    assert cmdline.startswith("console=ttyS0 nr_cpus=1 irqpoll reset_devices elfcorehdr=")
    m = re.search(r"elfcorehdr=(\d+)K$", cmdline)
    assert m and int(m.group(1)) * 1024 == ss.by_kind(SegmentKind.ELFCOREHDR).mem
    e820 = image.layout.e820
    ram = [(e.range.start, e.range.last) for e in e820 if e.type == 1]
    hdr = image.layout.elfcorehdr
    backup = image.layout.backup
    for start, end in ram:  # neither the header nor the backup is RAM for the capture kernel
        assert end < hdr.start or start > hdr.last
        assert end < backup.start or start > backup.last
    assert (0x7FFE0000, 0x10000, 3) in [(e.range.start, e.range.size, int(e.type)) for e in e820]
    assert (0x7FFF0000, 0x10000, 4) in [(e.range.start, e.range.size, int(e.type)) for e in e820]
    assert struct.unpack_from("<Q", setup.buf, 0x250)[0] == ss.by_kind(SegmentKind.SETUP_DATA).mem
    assert ss.by_kind(SegmentKind.SETUP_DATA).buf[16:] == bytes(range(32))


def test_a_batch_changes_only_the_header_and_the_digest(image) -> None:  # type: ignore[no-untyped-def]
    a = image.build(synth.build_elfcorehdr(4))
    b = image.build(synth.build_elfcorehdr(9, fill=0x1234))
    assert a.digest != b.digest
    for sa, sb in zip(a.segments, b.segments):
        assert (sa.kind, sa.mem, sa.memsz) == (sb.kind, sb.mem, sb.memsz)
        if sa.kind in (SegmentKind.ELFCOREHDR, SegmentKind.PURGATORY):
            continue
        assert sa.buf is sb.buf  # prepared once, shared, never re-hashed
    pa, pb = purgatory_of(a).buf, purgatory_of(b).buf
    diff = [i for i in range(len(pa)) if pa[i] != pb[i]]
    d = image.view.sha256_digest
    assert diff and all(d <= i < d + 32 for i in diff)
    image.verify(b)


def test_corrupted_cached_digest_is_caught(image, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # The cached prefix state hashed something else (a bit flip, a stale
    # buffer): the patched digest is wrong and verification must refuse it.
    wrong_prefix = [Segment(b"\x01", 0x2B000000, 0x1000, SegmentKind.INITRD)]
    monkeypatch.setattr(image, "_prefix_digest", PrefixDigest(wrong_prefix))
    ss = image.build(synth.build_elfcorehdr(4))
    with pytest.raises(DigestMismatchError, match="refusing to load: purgatory sha256_digest"):
        image.verify(ss)
    with pytest.raises(DigestMismatchError):
        image.verify(ss, reuse_attested_prefix=True)


def test_tampered_buffers_are_caught(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(4))
    # a kernel byte changed after the digest was computed
    segs = [
        Segment(s.buf[:-1] + bytes([s.buf[-1] ^ 1]), s.mem, s.memsz, s.kind) if s.kind is SegmentKind.KERNEL else s
        for s in ss.segments
    ]
    bad = SegmentSet(tuple(segs), ss.entry, ss.flags, ss.crash_region, ss.digest)
    with pytest.raises(DigestMismatchError):
        image.verify(bad)
    with pytest.raises(DigestMismatchError):  # not the attested object: hashed in full
        image.verify(bad, reuse_attested_prefix=True)
    # the digest in the purgatory flipped
    purg = purgatory_of(ss)
    buf = bytearray(purg.buf)
    buf[image.view.sha256_digest] ^= 0xFF
    segs = [Segment(bytes(buf), s.mem, s.memsz, s.kind) if s is purg else s for s in ss.segments]
    with pytest.raises(DigestMismatchError):
        image.verify(SegmentSet(tuple(segs), ss.entry, ss.flags, ss.crash_region, ss.digest))


def test_structural_breakage_is_caught(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(4))
    backup = ss.by_kind(SegmentKind.BACKUP)  # no contents: nothing to jump to
    with pytest.raises(VerificationError, match="entry point"):
        image.verify(SegmentSet(ss.segments, backup.mem, ss.flags, ss.crash_region, ss.digest))
    outside = PhysRange.from_inclusive(CRASH.start, CRASH.last - 0x100000)
    with pytest.raises(VerificationError, match="outside the crash kernel region"):
        image.verify(SegmentSet(ss.segments, ss.entry, ss.flags, outside, ss.digest))
    # regions table no longer matches (a segment dropped)
    segs = tuple(s for s in ss.segments if s.kind is not SegmentKind.SETUP_DATA)
    with pytest.raises(VerificationError, match="sha256_regions"):
        image.verify(SegmentSet(segs, ss.entry, ss.flags, ss.crash_region, ss.digest))


def test_purgatory_missing_a_symbol_is_refused() -> None:
    with pytest.raises(PurgatoryError, match="missing symbols: sha256_regions"):
        parse_purgatory(synth.build_purgatory(omit=("sha256_regions",)), "broken-kexec")


def test_crash_region_too_small_is_refused() -> None:
    with pytest.raises(SegmentLayoutError, match="crash kernel region .* too small") as info:
        prepare(make_inputs(crash_regions=(PhysRange.from_inclusive(0x2B000000, 0x2B0FFFFF),)))
    assert isinstance(info.value, InputError)


def test_header_larger_than_its_slot_is_refused(image) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ElfcorehdrOverflowError, match="do not fit the 16384-byte slot"):
        image.build(synth.build_elfcorehdr(400))
    with pytest.raises(InputError, match="elfcorehdr: not a little-endian ELF64"):
        image.build(b"not an elf header" * 8)


def test_still_valid_for_tracks_what_the_layout_depends_on(image) -> None:  # type: ignore[no-untyped-def]
    hot_added = (*IOMEM, IomemRange(PhysRange.from_inclusive(0x100000000, 0x13FFFFFFF), RangeKind.SYSTEM_RAM))
    assert image.still_valid_for((CRASH,), hot_added)  # more RAM: header only
    new_fw = (*IOMEM, IomemRange(PhysRange.from_inclusive(0xFED00000, 0xFED003FF), RangeKind.RESERVED))
    assert not image.still_valid_for((CRASH,), new_fw)
    assert not image.still_valid_for((PhysRange.from_inclusive(0x2C000000, 0x2CFFFFFF),), IOMEM)


def test_manifest_describes_every_segment(image) -> None:  # type: ignore[no-untyped-def]
    ss = image.build(synth.build_elfcorehdr(2))
    m = ss.manifest
    assert m["purgatory_digest"] == ss.digest.hex()
    rows = m["segments"]
    assert isinstance(rows, list) and len(rows) == len(ss.segments)
    assert [r["kind"] for r in rows] == [s.kind.value for s in ss.segments]
    assert m["cmdline"] == image.layout.cmdline
