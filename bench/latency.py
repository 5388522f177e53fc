"""Latency from the kernel's timestamp of a CPU hotplug change to its arrival
in the coalescer, for the BPF and the uevent source, over real cpu1
offline/online cycles (root).

    sudo .venv/bin/python bench/latency.py [--cycles 50] [--json]

Both sources run at once, with dedup off so that the coalescer accepts both
copies.  The kernel timestamp of a change is the BPF record's
bpf_ktime_get_ns() (CLOCK_MONOTONIC, taken in the cpuhp_exit tracepoint);
uevents carry none, so the uevent path is measured from the same BPF
timestamp of the same change.  "Arrival" is the coalescer's observer
callback for the item (time.monotonic_ns(), same clock).  cpu1 is put back
online whatever happens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coalescer import BatchRecorder, Policy, run_pipeline  # noqa: E402
from ground.records import Batch, Record
from probes import BpfSource, UeventSource, plan_program  # noqa: E402
from ground.events import HotplugEvent, Kind, SourceItem
from probes import _sysfs  # noqa: E402

CPU1 = Path("/sys/devices/system/cpu/cpu1/online")


class Arrivals:
    def __init__(self) -> None:
        self.items: list[tuple[int, HotplugEvent]] = []

    def on_item(self, item: SourceItem) -> None:
        if isinstance(item, HotplugEvent) and item.kind is Kind.CPU and item.cpu == 1:
            self.items.append((time.monotonic_ns(), item))

    def on_batch(self, batch: Batch) -> None:
        return None

    def on_record(self, record: Record) -> None:
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(cycles: int, pause: float, writer: str) -> dict[str, Any]:
    plan = plan_program(want_cpu=True, want_memory=False, want_kexec=False)
    bpf = BpfSource(plan, block_size=_sysfs.block_size_bytes())
    bpf.load()
    uevent = UeventSource(block_size=_sysfs.block_size_bytes() or 1 << 27)
    arrivals = Arrivals()
    policy = Policy(dedup_window=0.0, quiet=0.05, urgent_quiet=0.05, max_delay=1.0, urgent_max_delay=1.0)
    async with trio.open_nursery() as nursery:
        stage = await nursery.start(run_pipeline, [bpf, uevent], BatchRecorder(), policy, arrivals)
        try:
            for _ in range(cycles):
                for value in ("0", "1"):
                    if writer == "process":
                        await trio.run_process(["sh", "-c", f"echo {value} > {CPU1}"])
                    else:
                        await trio.to_thread.run_sync(CPU1.write_text, value + "\n")
                    await trio.sleep(pause)
        finally:
            CPU1.write_text("1\n")
        await trio.sleep(0.5)
        stage.stop_sources()
    by_source: dict[str, list[tuple[int, HotplugEvent]]] = {"bpf": [], "uevent": []}
    for arrived, item in arrivals.items:
        by_source[item.source].append((arrived, item))
    bpf_items, uevent_items = by_source["bpf"], by_source["uevent"]
    if len(bpf_items) != 2 * cycles or len(uevent_items) != 2 * cycles:
        raise SystemExit(f"expected {2 * cycles} events per source, got bpf={len(bpf_items)} uevent={len(uevent_items)}")
    result: dict[str, Any] = {"cycles": cycles, "events_per_source": 2 * cycles, "writer": writer}
    for name, items in (("bpf", bpf_items), ("uevent", uevent_items)):
        lat = []
        for (arrived, item), (_, kernel) in zip(items, bpf_items, strict=True):
            assert item.action == kernel.action
            lat.append((arrived - kernel.ts_ns) / 1e6)
        result[name] = {
            "median_ms": round(statistics.median(lat), 3),
            "p99_ms": round(percentile(lat, 0.99), 3),
            "max_ms": round(max(lat), 3),
        }
        for action in ("offline", "online"):
            part = [v for v, (_, it) in zip(lat, items, strict=True) if it.action == action]
            result[name][f"{action}_median_ms"] = round(statistics.median(part), 3)
    result["uevent_over_bpf_median"] = round(result["uevent"]["median_ms"] / result["bpf"]["median_ms"], 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between offline and online")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--writer", choices=("thread", "process"), default="process",
        help="who writes cpu1/online: another process (as in production: udev, an admin) or a thread of this one",
    )
    args = parser.parse_args()
    result = trio.run(measure, args.cycles, args.pause, args.writer)
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("bpf", "uevent"):
            r = result[name]
            print(
                f"{name:<7} kernel -> coalescer: median {r['median_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms "
                f"(median offline {r['offline_median_ms']} ms, online {r['online_median_ms']} ms)"
            )
        print(f"({result['events_per_source']} events per source over {result['cycles']} cpu1 offline/online cycles; "
              f"uevent/bpf median ratio {result['uevent_over_bpf_median']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
