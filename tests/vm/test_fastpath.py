"""Issue 6's proof: the ``kexec-fast`` backend loads a crash kernel that boots and captures, like kexec-tools'.

In the guest (Debian 6.1 under TCG), ``kdump-coalesce run --backend kexec-fast
--source uevent`` (netlink uevents: no BCC compile in the guest) keeps kdump
current while a DIMM and a CPU are hot-added; then a real panic.  The capture
kernel booting at all means purgatory's SHA-256 check passed in real memory
and it jumped to the kernel with the right registers; its /proc/vmcore must
have the DIMM's range and the new CPU's note.  A second guest does the same
hotplug and loads with kexec-tools (``kexec -p``): both vmcores are compared.

Allowed differences between the two vmcores (documented in docs/fast-path.md):

- p_offset: /proc/vmcore rewrites it (``fs/proc/vmcore.c``); PT_NOTEs are
  merged into one, so notes are compared by count (NT_PRSTATUS per CPU) and
  the presence of VMCOREINFO;
- KASLR differs per boot: the kernel text PT_LOAD's addresses and the direct
  map base (page_offset) are compared as "text size equal" and "every RAM
  PT_LOAD has p_vaddr = page_offset + p_paddr with one 1 GiB-aligned
  page_offset";
- the crash region's place differs per boot too (crashkernel= is reserved
  around wherever KASLR put the kernel), and both loaders cut it out of the
  RAM they dump: each vmcore's RAM PT_LOADs must avoid its own boot's crash
  region, and with that region added back both must cover exactly the same
  RAM; both have the same number of PT_LOADs.

Fault injection (one guest, one crash): a purgatory blob missing a symbol
(refused at start-up, exit non-zero, kdump untouched), a crash region too
small for the fast path's image (prepare refuses, the updater falls back to
kexec-tools in the same batch), a corrupted cached SHA-256 state (the
independent verification refuses the image, both on a first load and on an
attested-prefix load; fallback).  Each leaves a crash kernel loaded; the last
one is followed by a crash whose vmcore has the memory added just before.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import struct
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from updater.fastpath import load_purgatory

from .conftest import BootGuest
from testbed.harness import CAPTURE_APPEND, GIB, GUEST_XFER, VENV, GuestDaemon, TraceLog, VmAssets, crash_kernel, merge_ranges, parse_trace
from testbed.daemon import kexec_daemon_args
from testbed.vmcore import VmcoreHeader

pytestmark = pytest.mark.vm

TEXT_VADDR_MIN = 0xFFFFFFFF80000000


def fast_args(assets: VmAssets, *, source: str = "uevent", backend: str = "kexec-fast", extra: tuple[str, ...] = ()) -> list[str]:
    """``kdump-coalesce run`` with the VM tier's capture kernel (host paths: the daemon runs in the chroot)."""
    return kexec_daemon_args(assets, load_path="kexec_load", source=source, backend=backend, extra=extra)


def _fast_reloads(trace: TraceLog) -> list[dict[str, Any]]:
    return [dict(r.record) for r in trace.reloads if r.backend == "kexec-fast"]


def _timing_table(trace: TraceLog) -> str:
    rows = ["| batch | result | verify | prepare ms | header ms | build ms | verify ms | user-space ms | syscall ms | window s | wall s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in trace.reloads:
        fp = r.record.get("fastpath") or {}
        t = fp.get("timings") or {}
        def ms(k: str) -> str:
            return f"{t[k] * 1e3:.2f}" if k in t else "-"
        rows.append(
            f"| {r.record.get('batch')} | {r.result} ({r.backend}) | {fp.get('verify_mode', '-')} | {ms('prepare_s')} | {ms('header_s')} "
            f"| {ms('build_s')} | {ms('verify_s')} | {ms('userspace_s')} | {ms('syscall_s')} | {r.window_s} | {r.wall_s} |"
        )
    return "\n".join(rows)


def _ram_loads(v: VmcoreHeader) -> list[tuple[int, int]]:
    return sorted((s.paddr, s.memsz) for s in v.loads if s.vaddr < TEXT_VADDR_MIN)


def _with_region(v: VmcoreHeader, region: tuple[int, int]) -> list[tuple[int, int]]:
    """The RAM the vmcore covers with the boot's crash region added back (its place differs per boot)."""
    return merge_ranges([(p, p + m) for p, m in _ram_loads(v)] + [region])


def _text_sizes(v: VmcoreHeader) -> list[int]:
    return sorted(s.memsz for s in v.loads if s.vaddr >= TEXT_VADDR_MIN)


def _page_offsets(v: VmcoreHeader) -> set[int]:
    return {(s.vaddr - s.paddr) & 0xFFFFFFFFFFFFFFFF for s in v.loads if s.vaddr < TEXT_VADDR_MIN}


def _strip_elfcorehdr(cmdline: str) -> str:
    return re.sub(r"\s*elfcorehdr=\S+", "", cmdline).strip()


def test_fastpath_capture_after_hotplug_matches_kexec_tools(boot_guest: BootGuest) -> None:
    # -- guest 1: kdump-coalesce --backend kexec-fast keeps kdump current; crash
    g = boot_guest()
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 0
    d: GuestDaemon = g.start_daemon(fast_args(g.assets), ready=lambda t: t.ready, ready_timeout=240)
    start = d.trace()
    first = _fast_reloads(start)
    assert first and first[0]["result"] == "ok", d.log()[-3000:]
    assert first[0]["fastpath"]["verify_mode"] == "full", first[0]  # first load after prepare: full recomputation
    base_ram = int(first[0]["ram_bytes"])
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1

    dimm = g.hotplug_dimm(GIB)
    cpu = g.hotplug_cpu(online=True)

    def settled(t: TraceLog) -> bool:
        after = [r for r in t.reloads_after_ready() if r.result == "ok" and r.backend == "kexec-fast"]
        return bool(after) and cpu in after[-1].record.get("cpus", []) and int(after[-1].record["ram_bytes"]) >= base_ram + GIB

    d.wait(settled, 120, "a kexec-fast reload covering the DIMM and the new CPU")
    trace = d.wait_quiet(3.0, 60)
    print("kexec-fast reloads in the guest:\n" + _timing_table(trace))
    assert not [r for r in trace.reloads if r.result in ("failed", "fallback")], [r.record for r in trace.reloads]
    batch_loads = [r for r in trace.reloads_after_ready() if r.result == "ok"]
    assert batch_loads and {r.backend for r in batch_loads} == {"kexec-fast"}
    # One prepare for the whole run; every batch load after the first reuses the attested prefix.
    assert {r.record["fastpath"]["prepares"] for r in batch_loads} == {1}
    assert {r.record["fastpath"]["verify_mode"] for r in batch_loads} == {"attested-prefix"}
    for r in batch_loads:
        t = r.record["fastpath"]["timings"]
        assert 0 < r.record["window_s"] <= t["syscall_s"] + 2e-3, r.record  # exact (BPF) or the ctypes bracket
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1
    status = json.loads((g.xfer / "status.json").read_text())
    assert status["backend"] == "kexec-fast" and status["state"] == "ok", status
    d.stop()
    region1 = crash_kernel(g.iomem())
    fast = g.crash_and_capture()
    print(f"kexec-fast capture: {fast.vmcore.describe()}\n  cmdline: {fast.cmdline}")
    assert fast.vmcore.covers(dimm.addr, dimm.end), fast.vmcore.describe()
    assert fast.vmcore.cpu_notes == 3, fast.vmcore.describe()
    assert fast.vmcore.has_vmcoreinfo

    # -- guest 2: same hotplug, kexec-tools' own kexec -p; crash
    g2 = boot_guest()
    dimm2 = g2.hotplug_dimm(GIB)
    assert (dimm2.addr, dimm2.end) == (dimm.addr, dimm.end)
    assert g2.hotplug_cpu(online=True) == cpu
    g2.kexec_load_crash("kexec_load", where="host")  # the same /sbin/kexec, kernel and initrd files
    region2 = crash_kernel(g2.iomem())
    ref = g2.crash_and_capture()
    print(f"kexec -p capture:   {ref.vmcore.describe()}\n  cmdline: {ref.cmdline}")

    assert region1 is not None and region2 is not None
    for v, region in ((fast.vmcore, region1), (ref.vmcore, region2)):
        assert not [(p, m) for p, m in _ram_loads(v) if p < region[1] and region[0] < p + m], (v.describe(), region)
    assert _with_region(fast.vmcore, region1) == _with_region(ref.vmcore, region2), (
        f"\nfast {fast.vmcore.describe()} (crash region {region1[0]:#x}-{region1[1] - 1:#x})"
        f"\nref  {ref.vmcore.describe()} (crash region {region2[0]:#x}-{region2[1] - 1:#x})"
    )
    assert _text_sizes(fast.vmcore) == _text_sizes(ref.vmcore)
    for v in (fast.vmcore, ref.vmcore):
        (po,) = _page_offsets(v)
        assert po % GIB == 0, hex(po)
    assert fast.vmcore.cpu_notes == ref.vmcore.cpu_notes == 3
    assert fast.vmcore.has_vmcoreinfo and ref.vmcore.has_vmcoreinfo
    assert len(fast.vmcore.loads) == len(ref.vmcore.loads)
    assert "elfcorehdr=" in fast.cmdline and "elfcorehdr=" in ref.cmdline
    assert _strip_elfcorehdr(fast.cmdline) == _strip_elfcorehdr(ref.cmdline), (fast.cmdline, ref.cmdline)


CORRUPT = r'''
import json, sys, time
import trio
from ground.kexec_log import KexecCallLog
from ground.records import ReloadRecord, to_json
from updater import KexecSettings, UpdaterSettings, diff_headers, open_updater, read_snapshot

out, kernel, initrd, cmdline = sys.argv[1:5]

class Recorder:  # a ground.observer.Observer that keeps the reload records as JSON
    def __init__(self): self.records = []
    def on_item(self, item): pass
    def on_batch(self, batch): pass
    def on_record(self, record):
        if isinstance(record, ReloadRecord):
            self.records.append({"type": "reload", **to_json(record)})

async def main():
    rec = Recorder()
    settings = UpdaterSettings(backend="kexec-fast", status_file=out + ".status", retry_delay=0.0)
    kexec = KexecSettings(binary="/sbin/kexec", kernel=kernel, initrd=initrd, cmdline=cmdline, load_path="kexec_load", distro="none")
    up = await open_updater({"updater": settings, "kexec": kexec}, rec, KexecCallLog())
    engine = up.backend.engine
    results = {}
    for seq, case in enumerate(("first-load", "attested-prefix"), start=1):
        snap = read_snapshot("/")
        header = up._build(snap)
        engine.segment_set_for(snap, header)          # prepare (+ one full verification)
        engine.image._prefix_digest._state.update(b"\0")   # corrupt the cached SHA-256 state
        if case == "first-load":
            engine._full_verified = False             # as on the first load after a prepare
        ok = await up._reload(seq, snap, header, diff_headers(None, header), f"fault injection: {case}", time.monotonic())
        reload = [r for r in rec.records if r["type"] == "reload"][-1]
        results[case] = {"ok": ok, "record": reload, "image_discarded": engine.image is None}
    json.dump(results, open(out, "w"), default=str, indent=1)

trio.run(main)
'''


def _bad_purgatory() -> bytes:
    """kexec-tools' purgatory whose ``sha256_digest`` symbol is renamed ``ha256_digest``.

    Its name shares the string table with ``verify_sha256_digest`` (suffix
    merging), so the symbol's st_name is moved one byte on instead of
    editing the string.
    """
    blob = load_purgatory("/sbin/kexec")
    data = bytearray(blob.data)
    elf = ELFFile(io.BytesIO(bytes(data)))
    symtab = elf.get_section_by_name(".symtab")
    hits = [i for i, sym in enumerate(symtab.iter_symbols()) if sym.name == "sha256_digest"]
    assert len(hits) == 1, hits
    entry = symtab["sh_offset"] + hits[0] * symtab["sh_entsize"]
    (st_name,) = struct.unpack_from("<I", data, entry)
    struct.pack_into("<I", data, entry, st_name + 1)
    return bytes(data)


def test_fastpath_faults_refuse_fall_back_and_keep_kdump(boot_guest: BootGuest) -> None:
    g = boot_guest()
    region = 128 << 20
    # A tight crash region (shrinking is only allowed while nothing is loaded:
    # kernel/kexec_core.c crash_shrink_memory).
    g.run(f"echo {region} > /sys/kernel/kexec_crash_size")
    assert int(g.read_text("/sys/kernel/kexec_crash_size").strip()) == region
    g.kexec_load_crash("kexec_load", where="host")

    # 1. A purgatory missing a symbol: refused at start-up, one-line error, kdump untouched.
    (g.xfer / "bad-purgatory.o").write_bytes(_bad_purgatory())
    (g.xfer / "bad.toml").write_text(f'[updater]\nfast-purgatory = "{GUEST_XFER}/bad-purgatory.o"\n')
    quoted = " ".join(shlex.quote(a) for a in fast_args(g.assets, source="scenario:cpu:2:3", extra=("--config", f"{GUEST_XFER}/bad.toml")))
    res = g.run_host(f"{VENV}/bin/kdump-coalesce {quoted} --trace-file {GUEST_XFER}/bad.jsonl", timeout=240, check=False)
    print(f"bad purgatory: rc {res.rc}: {res.text.strip().splitlines()[-1] if res.text.strip() else ''}")
    assert res.rc != 0, res.text[-3000:]
    assert "bad-purgatory.o" in res.text and "sha256_digest" in res.text, res.text[-3000:]
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1

    # 2. The crash region too small for the fast path's image (an elfcorehdr slot
    #    of ~84 MiB from a huge headroom, in 128 MiB with a 64 MiB kernel):
    #    prepare refuses, the same batch falls back to kexec-tools, which fits.
    dimm1 = g.hotplug_dimm(GIB)
    # --backend auto: on this kernel (kexec_load allowed, no crash_hotplug) it picks kexec-fast.
    args = fast_args(g.assets, source="scenario:cpu:2:3", backend="auto", extra=("--headroom-ranges", "1500000"))
    quoted = " ".join(shlex.quote(a) for a in args)
    res = g.run_host(f"{VENV}/bin/kdump-coalesce {quoted} --trace-file {GUEST_XFER}/small.jsonl", timeout=240, check=False)
    trace = parse_trace((g.xfer / "small.jsonl").read_text())
    print("small region:\n" + _timing_table(trace))
    assert res.rc == 0, res.text[-3000:]
    fb = [r for r in trace.reloads if r.result == "fallback"]
    assert fb and fb[0].backend == "kexec", [r.record for r in trace.reloads]
    assert fb[0].record["fastpath_error"]["error"] == "SegmentLayoutError", fb[0].record
    assert not [r for r in trace.reloads if r.result == "failed"]
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1
    status = json.loads((g.xfer / "status.json").read_text())
    assert status["backend"] == "kexec-fast", status["backend_why"]

    # dry-run on this kexec-capable guest stages the fast path's segment set and loads nothing.
    loaded_before = g.read_text("/sys/kernel/kexec_crash_loaded").strip()
    args = fast_args(g.assets, source="scenario:cpu:2:3", backend="dry-run", extra=("--staging-dir", f"{GUEST_XFER}/staging"))
    res = g.run_host(f"{VENV}/bin/kdump-coalesce {' '.join(shlex.quote(a) for a in args)}", timeout=240, check=False)
    assert res.rc == 0, res.text[-3000:]
    staged = g.xfer / "staging" / "current"
    manifest = json.loads((staged / "manifest.json").read_text())
    assert manifest["fastpath"]["staged"] is True, manifest["fastpath"]
    seg = json.loads((staged / "fastpath.json").read_text())
    print(f"dry-run staged: {[(r['kind'], hex(r['mem']), r['memsz']) for r in seg['segments']]}")
    assert [r["kind"] for r in seg["segments"]][-1] == "elfcorehdr" and seg["verify_mode"] == "full"
    assert (staged / "segment-elfcorehdr.bin").read_bytes()[:4] == b"\x7fELF"
    assert g.read_text("/sys/kernel/kexec_crash_loaded").strip() == loaded_before == "1"

    # 3. A corrupted cached SHA-256 state: the independent check refuses the
    #    image (first load: full recomputation; later: attested prefix), the
    #    updater falls back to kexec-tools in the same batch.  Then crash.
    dimm2 = g.hotplug_dimm(GIB)
    (g.xfer / "corrupt.py").write_text(CORRUPT)
    g.run_host(
        f"cd /tmp && {VENV}/bin/python {GUEST_XFER}/corrupt.py {GUEST_XFER}/corrupt.json {g.assets.kernel} "
        f"{g.assets.capture_initrd} {shlex.quote(CAPTURE_APPEND)}",
        timeout=300,
    )
    results = json.loads((g.xfer / "corrupt.json").read_text())
    for case in ("first-load", "attested-prefix"):
        r = results[case]
        rec = r["record"]
        print(f"corrupted digest, {case}: {rec['result']} via {rec['backend']}: {rec.get('fastpath_error')}")
        assert r["ok"] and rec["result"] == "fallback" and rec["backend"] == "kexec", rec
        assert rec["fastpath_error"]["error"] == "DigestMismatchError", rec
        assert r["image_discarded"], r
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1
    cap = g.crash_and_capture()
    print(f"after the fallbacks: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm1.addr, dimm1.end) and cap.vmcore.covers(dimm2.addr, dimm2.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2
