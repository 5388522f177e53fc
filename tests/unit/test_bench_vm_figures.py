"""bench/vm's figures, table, plot and Ctrl-C path on synthetic guest records (issue 15).  No VM, no root.

The real runs are tests/vm/test_bench_vm.py and tests/vm/test_bench_rfc.py;
these check the arithmetic they rely on: stale time, the cut-off's
extrapolation, the in-kernel update (kprobe) lines, the table's targets and
what ``bench vm-resize`` prints when it is interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import bench.vm as vm
from bench.vm._metrics import extrapolate, figures, parse_kernel_updates, stale_time
from bench.vm._scale import CI, RFC, legacy_scale

REPO = Path(__file__).resolve().parents[2]


def _enter(pid: int, ts: float, nseg: int, flags: str = "3e0001") -> str:
    return f"           kexec-{pid}     [001] .....  {ts:.6f}: sys_kexec_load(entry: 0, nr_segments: {nseg:x}, segments: 0, flags: {flags})"


def _exit(pid: int, ts: float, ret: str = "0x0") -> str:
    return f"           kexec-{pid}     [001] .....  {ts:.6f}: sys_kexec_load -> {ret}"


def _exec(pid: int, ts: float) -> str:
    return f"           kexec-{pid}     [000] .....  {ts:.6f}: sched_process_exec: filename=/sbin/kexec pid={pid} old_pid={pid}"


def _kp(pid: int, ts: float, kind: str) -> str:
    return f"     kworker/u4:1-{pid}      [000] .....  {ts:.6f}: kdc_chp_{kind}: (crash_handle_hotplug_event+0x0/0x1a0)"


def test_stale_time_runs_from_the_first_change_after_the_read_to_the_next_install() -> None:
    # image loaded at boot (read before t_start); changes at 10 and 11; a header read at 10.5 installed at 12
    # is stale from 12 (11 > 10.5) until the next install at 15 (read at 13: after every change)
    s = stale_time([(10.5, 12.0), (13.0, 15.0)], [10.0, 11.0], [], t_start=0.0, t_end=20.0)
    assert s == pytest.approx((12.0 - 10.0) + (15.0 - 12.0))
    # a window without any crash kernel is not stale time
    s2 = stale_time([(10.5, 12.0), (13.0, 15.0)], [10.0, 11.0], [(14.0, 15.0)], t_start=0.0, t_end=20.0)
    assert s2 == pytest.approx(s - 1.0)
    # nothing changed: never stale
    assert stale_time([(1.0, 2.0)], [], [], t_start=0.0, t_end=9.0) == 0.0


def test_exec_of_the_loader_bounds_its_read_and_kprobe_updates_are_installs_and_windows() -> None:
    # one DIMM of blocks 1-2: uevents at 1.0 and 1.2; /proc/iomem gained the DIMM at its first uevent (1.0);
    # kexec exec'd at 1.1 read it, its load 1.9-2.0 made kdump correct
    trace = [_exec(7, 1.1), _enter(7, 1.9, 5), _exit(7, 2.0)]
    uev = [(1.0, "add", 1), (1.2, "online", 2)]
    f = figures(uev, trace, cpu_s=1.0, t_start=0.0, t_end=5.0, dimm_blocks=[(1, 3)])
    assert f.reloads == 1 and f.total_s == pytest.approx(1.0) and f.settle_s == pytest.approx(0.8)
    # stale from the change (1.0) to the install (2.0), less the load's own window 1.9-2.0
    assert f.stale_s == pytest.approx(0.9)
    # counted per uevent instead, the 1.2 uevent came after the read: never correct, stale to the end
    g = figures(uev, trace, cpu_s=1.0, t_start=0.0, t_end=5.0)
    assert g.total_s is None and g.stale_s == pytest.approx(0.9 + 3.0)
    assert any("after the last hotplug uevent" in n for n in g.notes)
    k = [_kp(50, 1.001, "enter"), _kp(50, 1.002, "exit"), _kp(50, 1.201, "enter"), _kp(50, 1.203, "exit")]
    assert parse_kernel_updates(k) == [(1.001, 1.002), (1.201, 1.203)]
    fk = figures([(1.0, "online", 1), (1.2, "online", 2)], k, cpu_s=None, t_start=0.0, t_end=5.0)
    assert (fk.reloads, fk.kernel_updates) == (0, 2)
    assert fk.exposure_s == pytest.approx(0.003) and fk.settle_s == pytest.approx(0.003)
    # stale 1.0 -> 1.002 less its update window (1.001-1.002), then 1.2 -> 1.203 less 1.201-1.203
    assert fk.stale_s == pytest.approx(0.001 + 0.001, abs=1e-6)


def test_extrapolation_scales_the_measured_cycles_to_every_block() -> None:
    # 3 serial unload+load cycles of 1 s, 0.9 s window each, from a first uevent at 0; 10 blocks in all
    trace: list[str] = []
    for i in range(3):
        trace += [_enter(10 + i, i + 0.05, 0), _exit(10 + i, i + 0.06), _enter(20 + i, i + 0.9, 5), _exit(20 + i, i + 0.95)]
    trace += [_enter(99, 3.5, 0), _exit(99, 3.51)]  # after the cut: ignored
    uev = [(0.0, "online", b) for b in range(10)]
    x = extrapolate(uev, trace, t_cut=3.0, blocks=10, handlers_done=3, cpu_s=3.0)
    assert x is not None and x.from_reloads == 3 and x.reloads == 10
    assert x.mean_window_s == pytest.approx(0.9) and x.exposure_s == pytest.approx(9.0)
    assert x.mean_cycle_s == pytest.approx(2.95 / 3) and x.total_s == pytest.approx(2.95 / 3 * 10)
    assert x.cpu_s == pytest.approx(10.0)
    assert extrapolate(uev, [], t_cut=3.0, blocks=10, handlers_done=0, cpu_s=None) is None


def _run(name: str, layout: str, trace: list[str], uev: list[tuple[float, str, int]], **raw: Any) -> vm.StrategyRun:
    f = figures(uev, trace, cpu_s=0.5, handlers=len(uev), t_start=0.0, t_end=100.0)
    return vm.StrategyRun(
        name, f, True, "loads", 10.0, {"uevents": uev, **raw}, layout=layout, qemu_peak_rss=9 << 30,
        captured_bytes=512 << 30, expected_bytes=512 << 30,
    )  # fmt: skip


def _doc(interrupted: bool = False) -> dict[str, Any]:
    uev = [(1.0 + i * 0.01, "online", i) for i in range(40)]
    serial = [x for i in range(4) for x in (_enter(10 + i, 1 + i, 0), _exit(10 + i, 1 + i + 0.01), _enter(30 + i, 1.9 + i, 5), _exit(30 + i, 2 + i))]
    runs = [
        _run("udev-serial", "1x480g", serial, uev),
        _run("kdump-coalesce/kexec", "1x480g", [_enter(5, 3.0, 5), _exit(5, 3.001)], uev),
    ]
    x = extrapolate(uev, serial, t_cut=10.0, blocks=3840, handlers_done=4, cpu_s=4.0)
    runs[0] = vm.StrategyRun(**{**{k: getattr(runs[0], k) for k in vm.StrategyRun.__slots__}, "extrapolation": x})
    return vm.bench_doc(RFC, runs, interrupted=interrupted)


def test_table_states_extrapolation_bound_and_ratio() -> None:
    doc = _doc()
    json.dumps(doc)  # serialisable
    assert set(doc["strategies"]) == {"1x480g/udev-serial", "1x480g/kdump-coalesce/kexec"}
    d = doc["details"]["1x480g/udev-serial"]
    assert d["extrapolated"]["from_reloads"] == 4 and d["extrapolated"]["reloads"] == 3840
    text = vm.render_table(doc)
    assert "extrapolated to 3840 blocks from 4 reloads" in text
    assert "reloads 1 <= ceil(burst 0.4 s / max_delay 30 s) + 1 = 2: ok" in text
    assert "(extrapolated from 4 reloads)" in text and ">= 1000x: ok" in text
    assert "512.0 GiB" in text and "9216" in text  # capture size, qemu peak MiB


def test_plot_draws_the_real_timeline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.vm._plot import plot_vm

    path = tmp_path / "vm.png"
    plot_vm(_doc(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_prints_what_was_measured_and_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The VM side of Ctrl-C (the guest told to stop, its records read back, qemu
    # killed) is tests/vm/test_bench_rfc.py's; here: what the command does with it.
    doc = _doc()
    finished = vm.StrategyRun("kdump-coalesce/kexec", figures([(1.0, "online", 1)], [_enter(5, 2.0, 5), _exit(5, 2.01)], cpu_s=0.1),
                              True, "", 5.0, {}, layout="1x64g")  # fmt: skip
    partial = vm.StrategyRun("udev-serial", figures([(1.0, "online", 1)], [], cpu_s=0.2), None, "not checked", 3.0, {},
                             layout="1x64g", interrupted=True)  # fmt: skip

    def fake_vm_bench(dimms: int, names: Any, *, runs_out: list[vm.StrategyRun], **kw: Any) -> dict[str, Any]:
        runs_out.append(finished)
        raise vm.BenchInterrupted(partial)

    monkeypatch.setattr(vm, "vm_bench", fake_vm_bench)
    args = argparse.Namespace(dimms=8, scale="ci", strategy=None, vm_timeout=600.0, layout=None, cutoff=None, plot=None, json=True)
    assert vm.run_vm_bench(args) == 130
    out = json.loads(capsys.readouterr().out)
    assert out["interrupted"] is True and out["scale"] == "ci"
    assert out["details"]["udev-serial"]["interrupted"] is True
    assert out["details"]["udev-serial"]["capture_covers_all_dimms"] is None
    assert out["strategies"]["kdump-coalesce/kexec"]["reloads"] == 1
    assert doc["interrupted"] is False


def test_scales() -> None:
    assert sum(x.total_gib for x in RFC.layouts[:1]) * 8 == 3840  # 128 MiB blocks
    assert RFC.layouts[1].count * RFC.layouts[1].size_gib == 480 and RFC.layouts[1].count <= 256
    assert CI.layouts[0].total_gib * 8 >= 512 and "udev-serial" in CI.strategies
    assert legacy_scale(8).legacy and legacy_scale(8).layouts[0].count == 8
    with pytest.raises(Exception, match="--scale"):
        vm.run_vm_bench(argparse.Namespace(dimms=8, scale="huge", strategy=None, json=True))


def test_guest_counts_only_crash_loads_with_segments() -> None:
    spec = importlib.util.spec_from_file_location("bench_guest", REPO / "tools" / "vm" / "bench-guest.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines = [_enter(1, 1.0, 0), _exit(1, 1.1), _enter(2, 2.0, 5), _exit(2, 2.5), _enter(3, 3.0, 5), _exit(3, 3.1, "0xfffffffffffffff0"),
             _enter(4, 4.0, 5, flags="3e0000"), _exit(4, 4.1), _exec(5, 4.5)]  # fmt: skip
    assert mod.crash_loads_ok(lines) == 1


def test_calibrate_takes_the_uncontended_kdump_coalesce_run() -> None:
    from bench.calibrate import kdump_coalesce_run

    def run(contended: bool) -> dict[str, Any]:
        return {"m": {}, "d": {"contended": contended}}

    real = {"240x2g/kdump-coalesce/kexec": run(True), "240x2g/kdump-coalesce/kexec-fast": run(False)}
    assert kdump_coalesce_run(real, "240x2g") == "240x2g/kdump-coalesce/kexec-fast"
    real["240x2g/kdump-coalesce/kexec"] = run(False)
    assert kdump_coalesce_run(real, "240x2g") == "240x2g/kdump-coalesce/kexec"
    # contended only: still the one there is; none: none
    assert kdump_coalesce_run({"1x480g/kdump-coalesce/kexec": run(True)}, "1x480g") == "1x480g/kdump-coalesce/kexec"
    assert kdump_coalesce_run(real, "1x480g") is None
