"""The x86 boot protocol setup header of a bzImage (Documentation/arch/x86/boot.rst).

Only what a 64-bit kexec load needs is read: where the protected-mode kernel
starts (``setup_sects``), how much memory it needs once running
(``init_size``), how it must be aligned (``kernel_alignment``), and whether it
has a 64-bit entry point and may sit above 4 GiB (``xloadflags``).  The checks
are the ones kexec-tools' ``bzImage64_probe`` makes, so a file this module
accepts is one ``kexec -p`` would load with its bzImage64 loader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ._errors import BzImageError

SETUP_HEADER_START = 0x1F1
# The setup header is copied from here up to 0x202 + the jump offset at 0x201,
# and never more than 0x7f bytes (kexec-tools do_bzImage64_load does the same:
# a newer kernel's longer header is not something an older loader fills in).
SETUP_HEADER_MAX = 0x7F
MIN_PROTOCOL_64BIT = 0x020C  # 2.12: xloadflags, 64-bit entry at +0x200
LOADED_HIGH = 0x01  # loadflags bit 0: protected-mode code at 0x100000 (a bzImage)
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
STARTUP_64_OFFSET = 0x200  # 64-bit entry point, relative to the protected-mode kernel


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: the setup header fields a loader needs, and the kernel bytes."""

    source: str
    data: bytes = field(repr=False)
    setup_sects: int
    protocol_version: int
    loadflags: int
    xloadflags: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    init_size: int
    pref_address: int
    kernel_version: str

    @property
    def real_mode_size(self) -> int:
        """Bytes of the real-mode part (boot sector + setup) that precede the kernel proper."""
        return (self.setup_sects + 1) * 512

    @property
    def protected_mode_kernel(self) -> bytes:
        """The part that kexec loads as the kernel segment."""
        return self.data[self.real_mode_size :]

    @property
    def setup_header(self) -> bytes:
        """The setup header bytes a loader copies into the zero page at 0x1f1."""
        size = min(self.data[0x201] + 0x202 - SETUP_HEADER_START, SETUP_HEADER_MAX)
        return self.data[SETUP_HEADER_START : SETUP_HEADER_START + size]


def parse_bzimage(data: bytes, source: str = "<bzImage>") -> BzImage:
    """Parse and check a bzImage for a 64-bit kexec_load; raise :class:`BzImageError` if unusable."""
    if len(data) < 1024:
        raise BzImageError(source, f"{len(data)} bytes is too short for a bzImage")
    if struct.unpack_from("<H", data, 0x1FE)[0] != 0xAA55:
        raise BzImageError(source, "no x86 boot sector signature (0xAA55 at 0x1fe): not a bzImage")
    if data[0x202:0x206] != b"HdrS":
        raise BzImageError(source, "no 'HdrS' setup header magic at 0x202: not a bzImage")
    (protocol,) = struct.unpack_from("<H", data, 0x206)
    if protocol < MIN_PROTOCOL_64BIT:
        raise BzImageError(
            source,
            f"boot protocol {protocol >> 8}.{protocol & 0xFF:02d} < 2.12 has no 64-bit entry point",
        )
    loadflags = data[0x211]
    if not loadflags & LOADED_HIGH:
        raise BzImageError(source, "loadflags lack LOADED_HIGH: a zImage, not a bzImage")
    (xloadflags,) = struct.unpack_from("<H", data, 0x236)
    if xloadflags & (XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G) != XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G:
        raise BzImageError(source, f"xloadflags 0x{xloadflags:x}: not a relocatable 64-bit kernel")
    setup_sects = data[0x1F1] or 4  # 0 means 4, for compatibility with ancient images
    (kernel_alignment,) = struct.unpack_from("<I", data, 0x230)
    relocatable = data[0x234] != 0
    (cmdline_size,) = struct.unpack_from("<I", data, 0x238)
    (pref_address,) = struct.unpack_from("<Q", data, 0x258)
    (init_size,) = struct.unpack_from("<I", data, 0x260)
    if not relocatable:
        raise BzImageError(source, "relocatable_kernel is 0: the kernel cannot run from the crash region")
    if kernel_alignment == 0 or kernel_alignment & (kernel_alignment - 1) or kernel_alignment < 4096:
        raise BzImageError(source, f"kernel_alignment 0x{kernel_alignment:x} is not a power of two >= 4096")
    real_mode_size = (setup_sects + 1) * 512
    if len(data) <= real_mode_size:
        raise BzImageError(source, f"truncated: {len(data)} bytes but setup_sects says {real_mode_size} of setup")
    if init_size < len(data) - real_mode_size:
        raise BzImageError(source, f"init_size 0x{init_size:x} is smaller than the kernel it should hold")
    return BzImage(
        source=source,
        data=data,
        setup_sects=setup_sects,
        protocol_version=protocol,
        loadflags=loadflags,
        xloadflags=xloadflags,
        kernel_alignment=kernel_alignment,
        relocatable=relocatable,
        cmdline_size=cmdline_size,
        init_size=init_size,
        pref_address=pref_address,
        kernel_version=_kernel_version(data),
    )


def _kernel_version(data: bytes) -> str:
    # kernel_version (0x20e) points at a NUL-terminated string, 0x200 bytes
    # before its file offset; 0 means the image does not say.
    (pointer,) = struct.unpack_from("<H", data, 0x20E)
    if pointer == 0:
        return ""
    start = pointer + 0x200
    end = data.find(b"\0", start, start + 256)
    if start >= len(data) or end < 0:
        return ""
    return data[start:end].decode("ascii", "replace")


def load_bzimage(path: str) -> BzImage:
    """Read and parse a bzImage file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BzImageError(path, f"cannot read: {e.strerror}") from e
    return parse_bzimage(data, path)
