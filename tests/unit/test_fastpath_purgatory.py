"""Purgatory: finding it in a container, validating it, laying it out, relocating it."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from ground.errors import InputError
from updater.fastpath import (
    PurgatoryError,
    RelocatedPurgatory,
    extract_purgatory,
    load_purgatory,
    parse_purgatory,
    purgatory_footprint,
)


from tests.fixtures.fastpath import synth
KEXEC = "/sbin/kexec"


def test_found_inside_a_container_at_any_offset() -> None:
    obj = synth.build_purgatory()
    decoy = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 3, 62) + bytes(44)  # ET_DYN header
    container = b"junk" * 1001 + decoy + b"x" * 77 + obj + b"trailer" * 50
    blob = extract_purgatory(container, "kexec-like")
    assert blob.offset == container.index(obj)
    assert blob.data == obj
    assert blob.source == f"kexec-like@0x{blob.offset:x}"


def test_container_without_purgatory_is_a_clear_input_error() -> None:
    with pytest.raises(PurgatoryError, match="no x86_64 ET_REL purgatory") as info:
        extract_purgatory(b"\x7fELF" + bytes(200), "/bin/true")
    assert isinstance(info.value, InputError)
    assert str(info.value).startswith("/bin/true: ")
    assert "\n" not in str(info.value)


def test_missing_symbols_are_all_named_in_one_line() -> None:
    obj = synth.build_purgatory(omit=("sha256_digest", "backup_start"))
    with pytest.raises(PurgatoryError) as info:
        parse_purgatory(obj, "p.o")
    msg = str(info.value)
    assert "missing symbols: sha256_digest, backup_start" in msg
    assert "\n" not in msg


def test_wrong_symbol_size_is_refused() -> None:
    obj = synth.build_purgatory(sizes={"entry64_regs": 128})
    with pytest.raises(PurgatoryError, match="entry64_regs is 128 bytes, not 136"):
        parse_purgatory(obj, "p.o")


def test_section_headers_past_the_end_are_refused() -> None:
    obj = synth.build_purgatory()
    with pytest.raises(PurgatoryError, match="section header table ends"):
        extract_purgatory(obj[:-100], "truncated")


def test_not_et_rel_or_wrong_machine() -> None:
    obj = bytearray(synth.build_purgatory())
    obj[16] = 2  # ET_EXEC
    with pytest.raises(PurgatoryError, match="not ET_REL"):
        parse_purgatory(bytes(obj), "exec")
    obj = bytearray(synth.build_purgatory())
    struct.pack_into("<H", obj, 18, 3)  # EM_386
    with pytest.raises(PurgatoryError, match="not EM_X86_64"):
        parse_purgatory(bytes(obj), "i386")


def test_layout_packs_by_alignment_and_puts_nobits_last() -> None:
    blob = parse_purgatory(synth.build_purgatory(), "p.o")
    fp = purgatory_footprint(blob)
    # .text 64 @0, .rodata 144 @64, .data 384 @4096 (align 4096): bufsz 4480;
    # .bss 4096 @ 8192 (aligned 4096): memsz 12288.
    assert (fp.bufsz, fp.memsz, fp.align) == (4096 + synth.DATA_SIZE, 12288, 4096)
    r = RelocatedPurgatory(blob, 0x20000000)
    assert r.section_addr[synth.TEXT] == 0x20000000
    assert r.section_addr[synth.RODATA] == 0x20000040
    assert r.section_addr[synth.DATA] == 0x20001000
    assert r.section_addr[synth.BSS] == 0x20002000
    assert r.entry == 0x20000010
    assert r.symbol_address("stack_end") == 0x20003000
    assert len(r.buf) == fp.bufsz


def test_relocations_are_applied_with_the_right_formulas() -> None:
    blob = parse_purgatory(synth.build_purgatory(), "p.o")
    base = 0x30000000
    r = RelocatedPurgatory(blob, base)
    text = base
    digest = r.symbol_address("sha256_digest")
    (pc32,) = struct.unpack_from("<i", r.buf, 0)
    assert pc32 == digest - 4 - (text + 0)
    (plt32,) = struct.unpack_from("<i", r.buf, 4)
    assert plt32 == r.symbol_address("helper") - 4 - (text + 4)
    assert struct.unpack_from("<I", r.buf, 8)[0] == r.symbol_address("stack_end")
    assert struct.unpack_from("<i", r.buf, 12)[0] == r.symbol_address("stack_end")
    assert struct.unpack_from("<Q", r.buf, 20)[0] == r.symbol_address("sha256_regions") + 8
    regs = struct.unpack("<17Q", r.get_symbol("entry64_regs"))
    assert regs[16] == r.symbol_address("entry32")  # rip, as entry64.S leaves it


def test_32s_overflow_above_2g_is_an_error() -> None:
    blob = parse_purgatory(synth.build_purgatory(), "p.o")
    RelocatedPurgatory(blob, 0x7FF00000)  # stack_end still below 2 GiB
    with pytest.raises(PurgatoryError, match="R_X86_64_32S .* overflows"):
        RelocatedPurgatory(blob, 0x80000000)


def test_32_overflow_above_4g_is_an_error() -> None:
    obj = synth.build_purgatory(extra_text_relocs=[(40, synth.R_X86_64_32, "stack_end", 0)])
    blob = parse_purgatory(obj, "p.o")
    with pytest.raises(PurgatoryError, match="overflows"):
        RelocatedPurgatory(blob, 0x100000000)


def test_unsupported_relocation_type_is_named() -> None:
    obj = synth.build_purgatory(extra_text_relocs=[(40, 9, "helper", 0)])  # R_X86_64_GOTPCREL
    blob = parse_purgatory(obj, "p.o")
    with pytest.raises(PurgatoryError, match=r"unsupported relocation R_X86_64_GOTPCREL at \.text\+0x28"):
        RelocatedPurgatory(blob, 0x1000000)


def test_set_symbol_checks_size_and_writes_in_place() -> None:
    blob = parse_purgatory(synth.build_purgatory(), "p.o")
    r = RelocatedPurgatory(blob, 0x1000000)
    r.set_symbol("backup_start", struct.pack("<Q", 0xDEADB000))
    off = r.symbol_offset("backup_start")
    assert struct.unpack_from("<Q", r.buf, off)[0] == 0xDEADB000
    with pytest.raises(PurgatoryError, match="backup_start is 8 bytes, not 4"):
        r.set_symbol("backup_start", b"1234")
    with pytest.raises(PurgatoryError, match="NOBITS"):
        r.symbol_offset("stack_end")


@pytest.mark.skipif(not os.path.exists(KEXEC), reason=f"{KEXEC} (kexec-tools) not installed")
def test_real_kexec_tools_purgatory() -> None:
    blob = load_purgatory(KEXEC)
    assert blob.source.startswith(f"{KEXEC}@0x")
    types = {rel.type for rs in blob.relocations for rel in rs.entries}
    assert types <= {1, 2, 4, 10, 11}, types
    assert blob.sha256_regions_count == 16
    fp = purgatory_footprint(blob)
    r = RelocatedPurgatory(blob, 0x3AF54000)
    # e_entry is purgatory_start in kexec-tools' link: both must agree.
    text = next(s for s in blob.sections if s.name == ".text")
    assert r.entry == r.section_addr[text.index] + blob.entry
    assert r.memsz == fp.memsz and len(r.buf) == fp.bufsz
