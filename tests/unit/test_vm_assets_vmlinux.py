"""tools/vm-assets' unpacking of the ELF kernel inside a bzImage (the VM tier boots it through PVH)."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import lzma
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.fastpath import real_bzimage

VM_ASSETS = Path(__file__).resolve().parents[2] / "tools" / "vm-assets"


def _vm_assets() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vm_assets", str(VM_ASSETS))
    spec = importlib.util.spec_from_loader("vm_assets", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vm_assets"] = module  # its dataclasses look their module up there
    loader.exec_module(module)
    return module


va = _vm_assets()


def _elf(notes: list[tuple[bytes, int]]) -> bytes:
    """An ELF64 header, one PT_NOTE program header and the notes (name, type; empty desc)."""
    blob = b""
    for name, kind in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), 4, kind) + n.ljust((len(n) + 3) & ~3, b"\0") + b"\0" * 4
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(blob), len(blob), 4)
    return ehdr + phdr + blob


def _bzimage(payload: bytes, *, version: int = 0x20F, setup_sects: int = 1) -> bytes:
    image = bytearray((setup_sects + 1) * 512 + 16)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = version.to_bytes(2, "little")
    image[0x248:0x24C] = (16).to_bytes(4, "little")  # payload_offset, after the protected-mode start
    image[0x24C:0x250] = len(payload).to_bytes(4, "little")
    return bytes(image) + payload + b"trailing code"


def test_payload_is_cut_by_the_setup_header_and_each_method_decodes() -> None:
    elf = _elf([(b"Xen", 18)])
    size = len(elf).to_bytes(4, "little")  # what the kernel's *_with_size rules append
    xz = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    for payload in (xz, gzip.compress(elf)):
        assert va.bzimage_payload(_bzimage(payload)) == payload
        assert va.decompress_payload(payload) == elf
    assert va.has_pvh_entry(elf)
    assert not va.has_pvh_entry(_elf([(b"Xen", 17), (b"Linux", 18)]))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"\0" * 0x300, "not a bzImage"),
        (_bzimage(b"x", version=0x207), "boot protocol 2.7"),
        (_bzimage(b"x")[:-20], "runs past the image"),
    ],
)
def test_bad_images_are_refused_with_the_reason(image: bytes, message: str) -> None:
    with pytest.raises(va.AssetError, match=message):
        va.bzimage_payload(image)


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(va.AssetError, match="unknown method"):
        va.decompress_payload(b"BZh91AY&SY")


@pytest.mark.skipif(real_bzimage() is None, reason="no Debian bzImage (set KDUMP_COALESCE_BZIMAGE or run tools/vm-assets)")
def test_debian_kernel_has_a_pvh_entry() -> None:
    """Debian's kernels (CONFIG_PVH=y) unpack to an ELF that qemu can enter through PVH."""
    image = Path(str(real_bzimage())).read_bytes()
    elf = va.decompress_payload(va.bzimage_payload(image))
    assert elf[:4] == b"\x7fELF" and va.has_pvh_entry(elf)
