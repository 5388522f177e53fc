"""Cross-check against kexec-tools itself: same purgatory and zero page, byte for byte.

Runs the installed ``/sbin/kexec -p`` in a private mount namespace where
/proc is a tmpfs holding a synthetic iomem (with a "Crash kernel" range) and
kcore, with an LD_PRELOAD shim (tests/fixtures/fastpath/kexec_capture.c)
that records the kexec_load(2) call instead of making it.  Then the fast
path relocates the same purgatory at kexec-tools' address, sets its symbols
from kexec-tools' segments, builds the setup segment from the same inputs,
and the bytes must be identical; the fast path's verifier must also accept
kexec-tools' own segment set.

Needs root (mount namespace), gcc, kexec-tools and a Debian bzImage; skips
with the reason otherwise.  Nothing is loaded: the kernel is never called.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ground.ranges import PhysRange
from updater.fastpath import (
    IomemRange,
    PrefixDigest,
    RangeKind,
    RelocatedPurgatory,
    Segment,
    SegmentKind,
    SegmentSet,
    backup_source,
    build_setup_segment,
    capture_memory_map,
    load_bzimage,
    load_purgatory,
    purgatory_view,
    recompute_digest,
    sha256_regions,
    verify_segment_set,
)

from tests.fixtures.fastpath import real_bzimage


KEXEC = "/sbin/kexec"
SHIM = Path(__file__).parents[1] / "fixtures" / "fastpath" / "kexec_capture.c"
BOOT_PARAMS = "/sys/kernel/boot_params/data"
CRASH = PhysRange.from_inclusive(0x2B000000, 0x3AFFFFFF)
IOMEM_TEXT = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-7ffdffff : System RAM
  01000000-01ffffff : Kernel code
  02000000-0260ffff : Kernel rodata
  2b000000-3affffff : Crash kernel
7ffe0000-7ffeffff : ACPI Tables
7fff0000-7fffffff : ACPI Non-volatile Storage
fed00000-fed003ff : Reserved
fee00000-fee00fff : Local APIC
"""
IOMEM = (
    IomemRange(PhysRange.from_inclusive(0x0, 0xFFF), RangeKind.RESERVED),
    IomemRange(PhysRange.from_inclusive(0x1000, 0x9FBFF), RangeKind.SYSTEM_RAM),
    IomemRange(PhysRange.from_inclusive(0x9FC00, 0x9FFFF), RangeKind.RESERVED),
    IomemRange(PhysRange.from_inclusive(0xF0000, 0xFFFFF), RangeKind.RESERVED),
    IomemRange(PhysRange.from_inclusive(0x100000, 0x7FFDFFFF), RangeKind.SYSTEM_RAM),
    IomemRange(PhysRange.from_inclusive(0x7FFE0000, 0x7FFEFFFF), RangeKind.ACPI_TABLES),
    IomemRange(PhysRange.from_inclusive(0x7FFF0000, 0x7FFFFFFF), RangeKind.ACPI_NVS),
    IomemRange(PhysRange.from_inclusive(0xFED00000, 0xFED003FF), RangeKind.RESERVED),
)
CMDLINE = "console=ttyS0 nr_cpus=1 irqpoll reset_devices"


def _why_not() -> str | None:
    bz = real_bzimage()
    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    for tool in ("gcc", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.path.exists(KEXEC):
        return f"{KEXEC} (kexec-tools) not installed"
    if bz is None:
        return "no Debian bzImage (set KDUMP_COALESCE_BZIMAGE or run tools/vm-assets)"
    if not os.path.exists(BOOT_PARAMS):
        return f"{BOOT_PARAMS} missing"
    return None


def _fake_kcore() -> bytes:
    # An ELF core header whose PT_LOADs are a kernel text mapping (holding
    # _stext) and the direct map: all kexec-tools reads from /proc/kcore.
    loads = [(0xFFFFFFFF81000000, 0x1000000, 0x2000000), (0xFFFF888000100000, 0x100000, 0x7FEE0000)]
    eh = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, len(loads), 0, 0, 0)
    ph = b"".join(struct.pack("<IIQQQQQQ", 1, 7, 0x1000, v, p, n, n, 0x1000) for v, p, n in loads)
    return eh + ph + bytes(8192)


@pytest.fixture(scope="module")
def kexec_tools_load(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[tuple[int, int, bytes]], Path, bytes]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    bz = real_bzimage()
    d = tmp_path_factory.mktemp("kexec-tools")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", d / "capture.so", SHIM, "-ldl"], check=True)
    (d / "iomem").write_text(IOMEM_TEXT)
    (d / "kcore").write_bytes(_fake_kcore())
    (d / "kallsyms").write_bytes(Path("/proc/kallsyms").read_bytes())
    (d / "mounts").write_bytes(Path("/proc/mounts").read_bytes())
    initrd = os.urandom(1 << 20)
    (d / "initrd").write_bytes(initrd)
    out = d / "out"
    out.mkdir()
    script = (
        "set -e\nmount -t tmpfs none /proc\n"
        f"cp {d}/iomem {d}/kcore {d}/kallsyms {d}/mounts /proc/\n"
        f"KEXEC_CAPTURE_DIR={out} LD_PRELOAD={d}/capture.so {KEXEC} -p "
        f"--command-line='{CMDLINE}' --initrd={d}/initrd {bz}\n"
    )
    run = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and not (out / "meta.txt").exists():
        pytest.fail(f"kexec -p under the capture shim failed: {run.stderr.strip()[-500:]}")
    lines = (out / "meta.txt").read_text().split("\n")
    entry, flags, count = (int(x, 16) for x in lines[0].split())
    assert flags == 0x003E0001
    segs = []
    for i in range(count):
        mem, memsz, bufsz = (int(x, 16) for x in lines[1 + i].split())
        buf = (out / f"seg{i}.bin").read_bytes()
        assert len(buf) == bufsz
        segs.append((mem, memsz, buf))
    return entry, segs, Path(bz or ""), initrd


def test_purgatory_and_zero_page_match_kexec_tools_byte_for_byte(
    kexec_tools_load: tuple[int, list[tuple[int, int, bytes]], Path, bytes],
) -> None:
    entry, segs, bz_path, initrd = kexec_tools_load
    kernel = load_bzimage(str(bz_path))
    blob = load_purgatory(KEXEC)
    purg = next(s for s in segs if s[0] <= entry < s[0] + s[1])
    setup = next(s for s in segs if s[2][0x202:0x206] == b"HdrS")
    kseg = next(s for s in segs if s[2] == kernel.protected_mode_kernel)
    iseg = next(s for s in segs if s[2] == initrd)
    elf = next(s for s in segs if s[2][:4] == b"\x7fELF")
    backup = next(s for s in segs if s not in (purg, setup, kseg, iseg, elf) and len(s[2]) > 0x1000)
    setup_data = next(s for s in segs if s not in (purg, setup, kseg, iseg, elf, backup))

    # -- purgatory: relocate at kexec-tools' address, set the same symbols
    r = RelocatedPurgatory(blob, purg[0])
    assert r.entry == entry
    regs = list(struct.unpack("<17Q", r.get_symbol("entry64_regs")))
    regs[1], regs[4], regs[6], regs[16] = 0, setup[0], r.symbol_address("stack_end"), kseg[0] + 0x200
    r.set_symbol("entry64_regs", struct.pack("<17Q", *regs))
    off = max(kernel.real_mode_size, 4096)
    cmdline = setup[2][off : setup[2].index(b"\0", off)].decode()
    assert cmdline == f"{CMDLINE} elfcorehdr={elf[0] // 1024}K"
    r.set_symbol("cmdline_end", struct.pack("<Q", setup[0] + off + len(cmdline)))
    src = backup_source(IOMEM)
    r.set_symbol("backup_src_start", struct.pack("<Q", src.start))
    r.set_symbol("backup_src_size", struct.pack("<Q", src.size))
    r.set_symbol("backup_start", struct.pack("<Q", backup[0]))
    r.set_symbol("panic_kernel", b"\x01")
    r.set_symbol("serial_base", struct.pack("<H", 0x3F8))
    hashed = [Segment(b, m, z, SegmentKind.INITRD) for m, z, b in sorted(segs) if (m, z, b) != purg]
    r.set_symbol("sha256_regions", sha256_regions(hashed))
    digest = recompute_digest(hashed)
    assert PrefixDigest(hashed[:-1]).digest_with(hashed[-1:]) == digest
    r.set_symbol("sha256_digest", digest)
    assert bytes(r.buf) == purg[2], "relocated purgatory differs from kexec-tools'"

    # -- zero page + command line: same inputs, same bytes.  kexec-tools cuts
    # the backup out of the memory map at its 1 KiB-rounded size.
    e820 = capture_memory_map(
        src,
        [CRASH],
        [("backup", PhysRange.from_size(backup[0], len(backup[2]))), ("elfcorehdr", PhysRange.from_size(elf[0], elf[1]))],
        [x for x in IOMEM if x.kind is not RangeKind.SYSTEM_RAM],
    )
    boot_params = Path(BOOT_PARAMS).read_bytes()
    mine = build_setup_segment(kernel, boot_params, setup[0], cmdline, iseg[0], len(initrd), e820, 0, setup_data[0])
    assert mine == setup[2], "zero page differs from kexec-tools'"

    # -- and the fast path's verifier accepts kexec-tools' own image
    kinds = {purg[0]: SegmentKind.PURGATORY, setup[0]: SegmentKind.SETUP, kseg[0]: SegmentKind.KERNEL,
             iseg[0]: SegmentKind.INITRD, elf[0]: SegmentKind.ELFCOREHDR, backup[0]: SegmentKind.BACKUP,
             setup_data[0]: SegmentKind.SETUP_DATA}
    theirs = SegmentSet(
        tuple(Segment(b, m, z, kinds[m]) for m, z, b in sorted(segs)), entry, 0x003E0001, CRASH, purg[2][
            purgatory_view(r).sha256_digest : purgatory_view(r).sha256_digest + 32
        ]
    )
    verified = verify_segment_set(theirs, purgatory_view(r))
    assert verified.digest == digest
