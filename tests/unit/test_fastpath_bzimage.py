"""bzImage setup header parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ground.errors import InputError
from updater.fastpath import BzImageError, load_bzimage, parse_bzimage
from tests.fixtures.fastpath import real_bzimage, synth


def test_synthetic_header_fields() -> None:
    k = parse_bzimage(synth.build_bzimage(payload_size=5000, init_size=0x30000), "synthetic")
    assert k.setup_sects == 1
    assert k.real_mode_size == 1024
    assert k.protocol_version == 0x020F
    assert k.kernel_alignment == 0x200000
    assert k.init_size == 0x30000
    assert k.cmdline_size == 2047
    assert k.relocatable
    assert k.kernel_version == "6.1.0-synthetic (t)"
    assert len(k.protected_mode_kernel) == 5000
    assert k.setup_header[0] == 1 and len(k.setup_header) == 0x66 + 0x202 - 0x1F1


@pytest.mark.parametrize(
    ("kwargs", "cut", "message"),
    [
        ({}, 600, "too short"),
        ({"protocol": 0x020B}, None, r"boot protocol 2\.11 < 2\.12"),
        ({"loadflags": 0}, None, "zImage"),
        ({"xloadflags": 0x1}, None, "not a relocatable 64-bit kernel"),
        ({"kernel_alignment": 0x1800}, None, "not a power of two"),
        ({"init_size": 0x100}, None, "init_size"),
    ],
)
def test_unusable_images_are_refused(kwargs: dict[str, int], cut: int | None, message: str) -> None:
    data = synth.build_bzimage(**kwargs)
    if cut is not None:
        data = data[:cut]
    with pytest.raises(BzImageError, match=message) as info:
        parse_bzimage(data, "vmlinuz-x")
    assert isinstance(info.value, InputError)
    assert str(info.value).startswith("vmlinuz-x: ")


def test_not_a_bzimage_at_all() -> None:
    with pytest.raises(BzImageError, match="0xAA55"):
        parse_bzimage(bytes(4096), "zeros")
    data = bytearray(synth.build_bzimage())
    data[0x202:0x206] = b"NOPE"
    with pytest.raises(BzImageError, match="HdrS"):
        parse_bzimage(bytes(data), "nohdr")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BzImageError, match="cannot read"):
        load_bzimage(str(tmp_path / "missing"))


@pytest.mark.skipif(real_bzimage() is None, reason="no Debian bzImage (set KDUMP_COALESCE_BZIMAGE or run tools/vm-assets)")
def test_real_debian_kernel() -> None:
    path = real_bzimage()
    assert path is not None
    k = load_bzimage(path)
    assert k.protocol_version >= 0x020C
    assert k.xloadflags & 3 == 3
    assert k.init_size > len(k.protected_mode_kernel)
    assert k.kernel_alignment >= 0x200000
    assert k.kernel_version
