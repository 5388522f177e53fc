"""The setup segment: the zero page (struct boot_params) followed by the command line.

The capture kernel's 64-bit entry point (startup_64) takes a pointer to a
``struct boot_params`` in %rsi (arch/x86/include/uapi/asm/bootparam.h).  What
goes in it follows kexec-tools' ``do_bzImage64_load``,
``setup_linux_bootloader_parameters_high`` and
``setup_linux_system_parameters`` (kexec/arch/x86_64/kexec-bzImage64.c,
kexec/arch/i386/x86-linux-setup.c), so that a capture kernel booted by the
fast path sees what it would see after ``kexec -p``:

* the bzImage's own setup header, copied to 0x1f1 (at most 0x7f bytes);
* loader type "kexec", the initrd and command line addresses (with their
  ``ext_`` high halves for addresses above 4 GiB);
* ``screen_info``, ``hardware_subarch`` and ``acpi_rsdp_addr`` from the
  running kernel's boot parameters (/sys/kernel/boot_params/data);
* the capture kernel's e820 map (see :mod:`._memmap`).

Not filled, and said so in docs/fast-path.md: a VESA/EFI framebuffer probed
through /dev/fb0 ioctls, EDD disk data from /sys/firmware/edd, and the EFI
runtime map (kexec-tools passes it as SETUP_EFI setup_data on EFI machines
that export /sys/firmware/efi/runtime-map; without it, as here, the capture
kernel gets ``acpi_rsdp=`` on its command line instead, which is also what
kexec-tools does when that map is absent or with ``--noefi``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ._bzimage import SETUP_HEADER_START, BzImage
from ._errors import SegmentLayoutError
from ._memmap import E820Entry

BOOT_PARAMS_SIZE = 4096
COMMAND_LINE_SIZE = 2048  # kexec-tools' limit; the kernel's own is cmdline_size + 1
PURGATORY_CMDLINE_SIZE = 64  # room kexec-tools leaves after the command line
LOADER_TYPE_KEXEC = 0xD << 4  # boot.rst: 0xD is kexec-tools (type_of_loader high nibble)
SETUP_RNG_SEED = 9  # struct setup_data type (arch/x86/include/uapi/asm/bootparam.h)
RNG_SEED_SIZE = 32
CL_MAGIC_VALUE = 0xA33F
SCREEN_INFO_SIZE = 0x40

# struct boot_params fields written here: name -> (offset, struct format).
# The wire format as data, so that tests check the same table the code uses.
BOOT_PARAMS_FIELDS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "orig_x": (0x000, "B"),
        "orig_y": (0x001, "B"),
        "ext_mem_k": (0x002, "H"),
        "orig_video_page": (0x004, "H"),
        "orig_video_mode": (0x006, "B"),
        "orig_video_cols": (0x007, "B"),
        "orig_video_ega_bx": (0x00A, "H"),
        "orig_video_lines": (0x00E, "B"),
        "orig_video_isVGA": (0x00F, "B"),
        "orig_video_points": (0x010, "H"),
        "cl_magic": (0x020, "H"),
        "cl_offset": (0x022, "H"),
        "acpi_rsdp_addr": (0x070, "Q"),
        "sys_desc_table_length": (0x0A0, "H"),
        "ext_ramdisk_image": (0x0C0, "I"),
        "ext_ramdisk_size": (0x0C4, "I"),
        "ext_cmd_line_ptr": (0x0C8, "I"),
        "efi_info": (0x1C0, "32s"),
        "alt_mem_k": (0x1E0, "I"),
        "e820_entries": (0x1E8, "B"),
        "eddbuf_entries": (0x1E9, "B"),
        "edd_mbr_sig_buf_entries": (0x1EA, "B"),
        "sentinel": (0x1EF, "B"),
        "root_flags": (0x1F2, "H"),
        "root_dev": (0x1FC, "H"),
        "boot_flag_hi": (0x1FF, "B"),
        "header": (0x202, "4s"),
        "version": (0x206, "H"),
        "type_of_loader": (0x210, "B"),
        "loadflags": (0x211, "B"),
        "ramdisk_image": (0x218, "I"),
        "ramdisk_size": (0x21C, "I"),
        "cmd_line_ptr": (0x228, "I"),
        "hardware_subarch": (0x23C, "I"),
        "setup_data": (0x250, "Q"),
        "e820_table": (0x2D0, "2560s"),
    }
)
E820_ENTRY_FORMAT = "<QQI"  # addr, size, type: 20 bytes, packed


def put(buf: bytearray, name: str, value: int | bytes) -> None:
    off, fmt = BOOT_PARAMS_FIELDS[name]
    struct.pack_into("<" + fmt, buf, off, value)


def get(buf: bytes | bytearray, name: str) -> int | bytes:
    off, fmt = BOOT_PARAMS_FIELDS[name]
    value: int | bytes = struct.unpack_from("<" + fmt, buf, off)[0]
    return value


def acpi_rsdp_from_boot_params(boot_params: bytes | None) -> int:
    """The RSDP address the running kernel was given (0 when its loader did not say)."""
    if boot_params is None or len(boot_params) < BOOT_PARAMS_SIZE:
        return 0
    value = get(boot_params, "acpi_rsdp_addr")
    assert isinstance(value, int)
    return value


def setup_cmdline_offset(kernel: BzImage) -> int:
    """Where the command line starts in the setup segment (after the real-mode size, >= 4 KiB)."""
    return max(kernel.real_mode_size, BOOT_PARAMS_SIZE)


def setup_segment_size(kernel: BzImage, cmdline: str) -> int:
    return setup_cmdline_offset(kernel) + len(cmdline.encode()) + 1 + PURGATORY_CMDLINE_SIZE


def capture_cmdline(base: str, elfcorehdr_addr: int, acpi_rsdp: int) -> str:
    """The command line kexec-tools gives a capture kernel: the user's, then acpi_rsdp=, then elfcorehdr=."""
    if elfcorehdr_addr % 1024:
        raise SegmentLayoutError("elfcorehdr", f"address 0x{elfcorehdr_addr:x} is not 1 KiB aligned")
    line = base
    if acpi_rsdp:
        line += f" acpi_rsdp=0x{acpi_rsdp:x}"
    return line + f" elfcorehdr={elfcorehdr_addr // 1024}K"


def build_setup_segment(
    kernel: BzImage,
    boot_params: bytes | None,
    setup_addr: int,
    cmdline: str,
    initrd_addr: int,
    initrd_size: int,
    e820: Sequence[E820Entry],
    acpi_rsdp: int,
    setup_data_addr: int = 0,
) -> bytes:
    """The zero page plus command line, for a setup segment loaded at ``setup_addr``."""
    raw_cmdline = cmdline.encode()
    if b"\0" in raw_cmdline:
        raise SegmentLayoutError("capture kernel command line", "contains a NUL byte")
    if len(raw_cmdline) > kernel.cmdline_size or len(raw_cmdline) >= COMMAND_LINE_SIZE:
        raise SegmentLayoutError(
            "capture kernel command line",
            f"{len(raw_cmdline)} bytes exceed the kernel's limit of {min(kernel.cmdline_size, COMMAND_LINE_SIZE - 1)}",
        )
    if boot_params is not None and len(boot_params) < BOOT_PARAMS_SIZE:
        raise SegmentLayoutError("boot_params", f"{len(boot_params)} bytes, expected {BOOT_PARAMS_SIZE}")
    cmdline_offset = setup_cmdline_offset(kernel)
    buf = bytearray(setup_segment_size(kernel, cmdline))
    header = kernel.setup_header
    buf[SETUP_HEADER_START : SETUP_HEADER_START + len(header)] = header

    # setup_linux_bootloader_parameters_high
    put(buf, "type_of_loader", LOADER_TYPE_KEXEC)
    put(buf, "loadflags", 0)
    put(buf, "ramdisk_image", initrd_addr & 0xFFFFFFFF)
    put(buf, "ramdisk_size", initrd_size & 0xFFFFFFFF)
    put(buf, "ext_ramdisk_image", initrd_addr >> 32)
    put(buf, "ext_ramdisk_size", initrd_size >> 32)
    put(buf, "cl_magic", CL_MAGIC_VALUE)
    put(buf, "cl_offset", cmdline_offset)
    cmd_line_ptr = setup_addr + cmdline_offset
    put(buf, "cmd_line_ptr", cmd_line_ptr & 0xFFFFFFFF)
    put(buf, "ext_cmd_line_ptr", cmd_line_ptr >> 32)
    buf[cmdline_offset : cmdline_offset + len(raw_cmdline)] = raw_cmdline

    # setup_linux_system_parameters
    if boot_params is not None:
        put(buf, "hardware_subarch", int.from_bytes(boot_params[0x23C:0x240], "little"))
    put(buf, "orig_x", 0)
    put(buf, "orig_y", 0)
    put(buf, "orig_video_page", 0)
    put(buf, "orig_video_mode", 0)
    put(buf, "orig_video_cols", 80)
    put(buf, "orig_video_lines", 25)
    put(buf, "orig_video_ega_bx", 0)
    put(buf, "orig_video_isVGA", 1)
    put(buf, "orig_video_points", 16)
    if boot_params is not None:
        # No framebuffer probed: the boot-time screen_info, keeping the
        # command line magic and offset just set.
        buf[0:SCREEN_INFO_SIZE] = boot_params[0:SCREEN_INFO_SIZE]
        put(buf, "cl_magic", CL_MAGIC_VALUE)
        put(buf, "cl_offset", cmdline_offset)
    put(buf, "ext_mem_k", 0)
    put(buf, "alt_mem_k", 0)
    buf[0x40:0xA0] = bytes(0x60)  # APM BIOS info and legacy drive info
    put(buf, "sys_desc_table_length", 0)
    put(buf, "root_flags", 0xFFFF)  # kexec-tools' mount_root_rdonly
    put(buf, "root_dev", 0x0300)
    put(buf, "boot_flag_hi", 0)  # kexec-tools' aux_device_info overlaps the high byte of boot_flag

    put(buf, "e820_entries", len(e820))
    for i, entry in enumerate(e820):
        r = entry.range
        struct.pack_into(E820_ENTRY_FORMAT, buf, 0x2D0 + 20 * i, r.start, r.size, int(entry.type))
        # kexec-tools' rule, on its inclusive range ends: RAM across 1 MiB.
        if entry.type == 1 and r.start <= 0x100000 < r.last:
            mem_k = (r.last >> 10) - (0x100000 >> 10)
            put(buf, "ext_mem_k", min(mem_k, 0xFC00))
            put(buf, "alt_mem_k", min(mem_k, 0xFFFFFFFF))
    put(buf, "acpi_rsdp_addr", acpi_rsdp)
    put(buf, "setup_data", setup_data_addr)
    return bytes(buf)


def rng_seed_setup_data(seed: bytes) -> bytes:
    """A SETUP_RNG_SEED ``struct setup_data`` (next = 0): entropy for the capture kernel's RNG.

    kexec-tools 2.0.25 passes one to every bzImage64 load; the capture kernel
    feeds it to its RNG and wipes it (arch/x86/kernel/setup.c parse_setup_data).
    """
    if len(seed) != RNG_SEED_SIZE:
        raise SegmentLayoutError("rng seed", f"{len(seed)} bytes, expected {RNG_SEED_SIZE}")
    return struct.pack("<QII", 0, SETUP_RNG_SEED, len(seed)) + seed
