"""The fast path's hand-over image: KEXEC_UPDATE_ELFCOREHDR, the elfcorehdr out of the digest.

Pure: synthetic kernel and purgatory (tests/fixtures/fastpath/synth.py), the
fake kexec_load endpoint of test_fastpath_backend.  That the kernel takes the
header and its purgatory check passes at panic is the VM tier's proof
(tests/vm/test_kernel_612.py, Debian 6.12).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio

from tests.fixtures.fastpath import synth
from tests.unit.test_fastpath_backend import host, loads, request_for, settings_for  # noqa: F401 (fixtures)
from tests.unit.test_fastpath_image import make_inputs
from updater.fastpath import (
    KEXEC_CRASH_FLAGS,
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_UPDATE_ELFCOREHDR,
    DigestMismatchError,
    Segment,
    SegmentKind,
    SegmentLayoutError,
    SegmentSet,
    VerificationError,
    VerifiedSegmentSet,
    create_backend,
    hotplug_slot_size,
    parse_sha256_regions,
    prepare,
    recompute_digest,
)

# Debian 6.12's /sys/kernel/crash_elfcorehdr_size: (2 + 8192 + 8192) * 56.
DEBIAN_612 = 917616


@pytest.fixture(scope="module")
def hotplug_image():  # type: ignore[no-untyped-def]
    return prepare(make_inputs(elfcorehdr_capacity=hotplug_slot_size(DEBIAN_612), kernel_hotplug_size=DEBIAN_612))


def _purgatory(ss: SegmentSet) -> Segment:
    return ss.by_kind(SegmentKind.PURGATORY)


def _replace(ss: SegmentSet, **kw: Any) -> SegmentSet:
    return dataclasses.replace(ss, **kw)


def test_slot_size_holds_the_kernels_rewrite() -> None:
    # 917616 bytes of program headers + the 64-byte ELF header, page aligned.
    assert hotplug_slot_size(DEBIAN_612) == 921600
    assert hotplug_slot_size(4096 - 64) == 4096 and hotplug_slot_size(4096 - 63) == 8192


def test_flags_carry_update_elfcorehdr_not_the_generic_bit(hotplug_image) -> None:  # type: ignore[no-untyped-def]
    ss = hotplug_image.build(synth.build_elfcorehdr(5))
    assert ss.flags == KEXEC_CRASH_FLAGS | KEXEC_UPDATE_ELFCOREHDR == 0x003E0005
    assert not ss.flags & KEXEC_CRASH_HOTPLUG_SUPPORT
    assert ss.manifest["kernel_hotplug"] is True and ss.manifest["flags"] == 0x003E0005
    assert ss.by_kind(SegmentKind.ELFCOREHDR).memsz == 921600


def test_elfcorehdr_is_out_of_regions_and_digest(hotplug_image) -> None:  # type: ignore[no-untyped-def]
    a = hotplug_image.build(synth.build_elfcorehdr(4))
    b = hotplug_image.build(synth.build_elfcorehdr(40, fill=0x77))
    purg = _purgatory(a)
    view = hotplug_image.view
    hashed = [s for s in a.segments if s.kind not in (SegmentKind.PURGATORY, SegmentKind.ELFCOREHDR)]
    regions = parse_sha256_regions(purg.buf[view.sha256_regions : view.sha256_regions + view.sha256_regions_size])
    assert regions == [(s.mem, s.memsz) for s in hashed]
    assert a.by_kind(SegmentKind.ELFCOREHDR).mem not in [r[0] for r in regions]
    # The kernel rewrites the header in place: the digest cannot depend on it.
    assert a.digest == b.digest == recompute_digest(hashed)
    assert purg.buf[view.sha256_digest : view.sha256_digest + 32] == a.digest
    v = hotplug_image.verify(b)
    assert v.mode == "full" and v.digest == a.digest
    assert hotplug_image.verify(b, reuse_attested_prefix=True).mode == "attested-prefix"


def test_without_kernel_hotplug_the_header_stays_hashed() -> None:
    image = prepare(make_inputs())
    ss = image.build(synth.build_elfcorehdr(4))
    assert ss.flags == KEXEC_CRASH_FLAGS and not image.kernel_hotplug
    hashed = [s for s in ss.segments if s.kind is not SegmentKind.PURGATORY]
    assert ss.digest == recompute_digest(hashed)


def test_the_flag_without_the_exclusion_is_refused() -> None:
    """A set hashed with the header but flagged for the kernel to rewrite it
    would fail purgatory's check after the first hotplug event."""
    image = prepare(make_inputs())
    ss = image.build(synth.build_elfcorehdr(4))
    with pytest.raises(VerificationError, match="sha256_regions"):
        image.verify(_replace(ss, flags=ss.flags | KEXEC_UPDATE_ELFCOREHDR))


def test_the_exclusion_without_the_flag_is_refused(hotplug_image) -> None:  # type: ignore[no-untyped-def]
    ss = hotplug_image.build(synth.build_elfcorehdr(4))
    with pytest.raises(VerificationError, match="sha256_regions"):
        hotplug_image.verify(_replace(ss, flags=KEXEC_CRASH_FLAGS))


def test_the_generic_hotplug_bit_is_refused(hotplug_image) -> None:  # type: ignore[no-untyped-def]
    ss = hotplug_image.build(synth.build_elfcorehdr(4))
    with pytest.raises(VerificationError, match="KEXEC_CRASH_HOTPLUG_SUPPORT"):
        hotplug_image.verify(_replace(ss, flags=ss.flags | KEXEC_CRASH_HOTPLUG_SUPPORT))


def test_another_segment_with_elf_magic_is_refused() -> None:
    """The kernel rewrites the segment that starts with ELF magic: an initrd
    that does too would be overwritten (or taken for the header)."""
    inputs = make_inputs(elfcorehdr_capacity=hotplug_slot_size(DEBIAN_612), kernel_hotplug_size=DEBIAN_612)
    elfish = dataclasses.replace(inputs.capture, initrd=b"\x7fELF" + bytes(4096))
    image = prepare(dataclasses.replace(inputs, capture=elfish))
    ss = image.build(synth.build_elfcorehdr(4))
    with pytest.raises(VerificationError, match="ELF magic"):
        image.verify(ss)


def test_a_tampered_hashed_segment_is_still_caught(hotplug_image) -> None:  # type: ignore[no-untyped-def]
    ss = hotplug_image.build(synth.build_elfcorehdr(4))
    segs = tuple(
        Segment(s.buf[:-1] + bytes([s.buf[-1] ^ 1]), s.mem, s.memsz, s.kind) if s.kind is SegmentKind.INITRD else s
        for s in ss.segments
    )
    with pytest.raises(DigestMismatchError):
        hotplug_image.verify(_replace(ss, segments=segs))


def test_a_slot_smaller_than_the_kernels_is_refused() -> None:
    with pytest.raises(SegmentLayoutError, match="crash_elfcorehdr_size"):
        prepare(make_inputs(elfcorehdr_capacity=64 * 1024, kernel_hotplug_size=DEBIAN_612))
    # and at verification, for a set whose header segment shrank
    image = prepare(make_inputs(elfcorehdr_capacity=hotplug_slot_size(DEBIAN_612), kernel_hotplug_size=DEBIAN_612))
    ss = image.build(synth.build_elfcorehdr(4))
    from updater.fastpath import verify_segment_set

    with pytest.raises(VerificationError, match="would not fit"):
        verify_segment_set(ss, image.view, hotplug_slot_min=hotplug_slot_size(DEBIAN_612) + 4096)


def test_backend_loads_with_the_flag_and_says_so(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:  # noqa: F811
    backend = create_backend(host["command"], settings_for(host), kernel_hotplug_size=DEBIAN_612)
    assert backend.kernel_hotplug and "KEXEC_UPDATE_ELFCOREHDR" in backend.describe()
    out = trio.run(backend.load, request_for(host))
    assert out.ok, out.detail
    (loaded,) = loads
    assert loaded.segment_set.flags & KEXEC_UPDATE_ELFCOREHDR
    assert loaded.segment_set.by_kind(SegmentKind.ELFCOREHDR).memsz >= hotplug_slot_size(DEBIAN_612)
    fp = out.extra["record"]["fastpath"]
    assert fp["kernel_hotplug"] is True and fp["flags"] == "0x3e0005"
    assert fp["elfcorehdr_slot"] == 921600
    plain = create_backend(host["command"], settings_for(host))
    out = trio.run(plain.load, request_for(host))
    assert out.ok and not loads[-1].segment_set.flags & KEXEC_UPDATE_ELFCOREHDR
    assert out.extra["record"]["fastpath"]["kernel_hotplug"] is False
