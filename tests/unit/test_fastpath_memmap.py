"""Placement, the kexec_load rules, the capture kernel's memory map and zero page."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ground.ranges import PhysRange
from updater.fastpath import (
    BOOT_PARAMS_FIELDS,
    E820Type,
    IomemRange,
    RangeKind,
    Segment,
    SegmentKind,
    SegmentLayoutError,
    backup_source,
    build_setup_segment,
    capture_cmdline,
    capture_memory_map,
    check_kexec_rules,
    parse_bzimage,
)
from updater.fastpath._segments import PlacementRequest, place_top_down


from tests.fixtures.fastpath import synth
REGION = PhysRange.from_inclusive(0x10000000, 0x10FFFFFF)


def test_top_down_placement_in_request_order() -> None:
    placed = place_top_down(
        REGION,
        [
            PlacementRequest(SegmentKind.ELFCOREHDR, 0x4000, 1024),
            PlacementRequest(SegmentKind.PURGATORY, 0x9000, 4096),
            PlacementRequest(SegmentKind.KERNEL, 0x300000, 0x200000),
        ],
    )
    assert [(p.kind, p.mem, p.memsz) for p in placed] == [
        (SegmentKind.ELFCOREHDR, 0x10FFC000, 0x4000),
        (SegmentKind.PURGATORY, 0x10FF3000, 0x9000),
        (SegmentKind.KERNEL, 0x10C00000, 0x300000),
    ]


def test_placement_refuses_too_many_or_too_big() -> None:
    with pytest.raises(SegmentLayoutError, match="KEXEC_SEGMENT_MAX"):
        place_top_down(REGION, [PlacementRequest(SegmentKind.INITRD, 4096, 4096)] * 17)
    with pytest.raises(SegmentLayoutError, match="no room for the initrd"):
        place_top_down(REGION, [PlacementRequest(SegmentKind.INITRD, REGION.size + 1, 4096)])
    with pytest.raises(SegmentLayoutError, match="control pages"):
        place_top_down(REGION, [PlacementRequest(SegmentKind.INITRD, REGION.size - 4096, 4096)])


def seg(mem: int, memsz: int, buf: bytes = b"", kind: SegmentKind = SegmentKind.INITRD) -> Segment:
    return Segment(buf, mem, memsz, kind)


def test_kexec_rules() -> None:
    ok = [seg(0x10000000, 0x1000), seg(0x10001000, 0x2000, b"x" * 10)]
    assert check_kexec_rules(ok, 0x10000000, REGION) == []
    problems = check_kexec_rules(
        [seg(0x10000800, 0x1000), seg(0x10001000, 0x1000, b"y" * 0x1001), seg(0x11000000, 0x1000)],
        0x20000000,
        REGION,
    )
    text = "; ".join(problems)
    assert "not page aligned" in text
    assert "bufsz 4097 > memsz 4096" in text
    assert "overlaps" in text
    assert "outside the crash kernel region" in text
    assert "entry 0x20000000 outside" in text
    assert check_kexec_rules([seg(0x10000000 + i * 0x1000, 0x1000) for i in range(17)], 0x10000000, REGION)


def test_backup_source_is_the_low_ram() -> None:
    iomem = [IomemRange(PhysRange.from_inclusive(0x1000, 0x9FBFF), RangeKind.SYSTEM_RAM), IomemRange(PhysRange.from_inclusive(0x100000, 0x7FFFFFFF), RangeKind.SYSTEM_RAM)]
    assert backup_source(iomem) == PhysRange.from_inclusive(0x1000, 0x9FBFF)
    assert backup_source(iomem[1:]) == PhysRange.from_inclusive(0, 0x9FFFF)  # kexec-tools' default


def test_capture_memory_map_cuts_and_types() -> None:
    crash = PhysRange.from_inclusive(0x2B000000, 0x3AFFFFFF)
    mm = capture_memory_map(
        PhysRange.from_inclusive(0x1000, 0x9FBFF),
        [crash],
        [("backup", PhysRange.from_inclusive(0x3AF61000, 0x3AFFFFFF)), ("elfcorehdr", PhysRange.from_inclusive(0x3AF5D000, 0x3AF60FFF))],
        [IomemRange(PhysRange.from_inclusive(0x0, 0xFFF), RangeKind.RESERVED), IomemRange(PhysRange.from_inclusive(0x7FFE0000, 0x7FFEFFFF), RangeKind.ACPI_TABLES)],
    )
    assert [(e.range.start, e.range.last, e.type) for e in mm] == [
        (0x0, 0xFFF, E820Type.RESERVED),
        (0x1000, 0x9FBFF, E820Type.RAM),
        (0x2B000000, 0x3AF5CFFF, E820Type.RAM),
        (0x7FFE0000, 0x7FFEFFFF, E820Type.ACPI),
    ]
    with pytest.raises(SegmentLayoutError, match="not inside one range"):
        capture_memory_map(PhysRange.from_inclusive(0x1000, 0x9FBFF), [crash], [("x", PhysRange.from_inclusive(0x3AFFF000, 0x3B000FFF))], [])


def test_cmdline_gets_acpi_rsdp_then_elfcorehdr() -> None:
    assert capture_cmdline("quiet", 0x3AF5D000, 0) == "quiet elfcorehdr=966004K"
    assert capture_cmdline("quiet", 0x3AF5D000, 0xF5A40) == "quiet acpi_rsdp=0xf5a40 elfcorehdr=966004K"
    with pytest.raises(SegmentLayoutError, match="1 KiB aligned"):
        capture_cmdline("", 0x3AF5D200, 0)


def field(buf: bytes, name: str) -> int | bytes:
    off, fmt = BOOT_PARAMS_FIELDS[name]
    value: int | bytes = struct.unpack_from("<" + fmt, buf, off)[0]
    return value


def test_zero_page_fields() -> None:
    k = parse_bzimage(synth.build_bzimage(setup_sects=1), "k")
    e820 = capture_memory_map(PhysRange.from_inclusive(0x1000, 0x9FBFF), [PhysRange.from_inclusive(0x2B000000, 0x2BFFFFFF)], [], [])
    bp = synth.boot_params(screen_fill=0x5A, subarch=0, acpi_rsdp=0)
    setup = build_setup_segment(k, bp, 0x1_2345_6000, "root=/dev/x", 0x1_0000_0000, 0x1234, e820, 0xF5A40, 0x2B000000)
    assert len(setup) == 4096 + len("root=/dev/x") + 1 + 64
    assert field(setup, "type_of_loader") == 0xD0
    assert field(setup, "loadflags") == 0
    assert field(setup, "header") == b"HdrS"
    assert field(setup, "ramdisk_image") == 0 and field(setup, "ext_ramdisk_image") == 1
    assert field(setup, "ramdisk_size") == 0x1234
    assert field(setup, "cmd_line_ptr") == 0x23457000 and field(setup, "ext_cmd_line_ptr") == 1
    assert setup[4096 : 4096 + 12] == b"root=/dev/x\0"
    assert field(setup, "cl_magic") == 0xA33F and field(setup, "cl_offset") == 4096
    assert setup[0x24:0x40] == bytes([0x5A]) * 0x1C  # screen_info from the running kernel's boot_params
    assert field(setup, "e820_entries") == 2
    assert struct.unpack_from("<QQI", setup, 0x2D0 + 20) == (0x2B000000, 0x1000000, 1)
    assert field(setup, "acpi_rsdp_addr") == 0xF5A40
    assert field(setup, "setup_data") == 0x2B000000
    assert field(setup, "root_dev") == 0x0300 and field(setup, "root_flags") == 0xFFFF
    with pytest.raises(SegmentLayoutError, match="exceed the kernel's limit"):
        build_setup_segment(k, bp, 0x1000, "x" * 2048, 0, 0, e820, 0)
