"""Event sources: the kernel's hotplug events as :class:`ground.events.HotplugEvent`.

Sources: BPF (BCC) on the cpuhp tracepoints and the memory hotplug functions
(online/offline, add/remove), netlink uevents, replay of a recorded trace,
and synthetic scenarios.  Which source follows which kernel change:
``_coverage.py`` and docs/probes.md.
"""

from ._bpf import BpfPlan, BpfSource, RecordError, decode_record, per_block, plan_program
from ._bpf_program import MemoryProbe, ProgramSpec, render
from ._capabilities import Capability, all_checks, events_covered, run_can_work
from ._coverage import ALL_CHANGES, GROUPS, UEVENT_ALWAYS, Change
from ._kmsg import ALL_CAUSES as KERNEL_UPDATE_CAUSES
from ._kmsg import KMSG_SOURCE_PREFIX, KmsgRecord, KmsgSource, classify, kernel_update_causes, kmsg_readable, parse_kmsg_lines
from ._replay import ReplaySource, replay_scenario, replay_trace
from ._scenario import SCENARIOS, Scenario, build_scenario
from ._select import SOURCE_SPECS, Coverage, SourceSelection, open_sources, plan_coverage
from ._source import EventSource
from ._sysfs import block_size_bytes, cpus_online, crash_hotplug, kexec_crash_loaded, memory_blocks_online
from ._uevent import Uevent, UeventError, UeventSource, parse_uevent, uevent_to_event
from ._units import format_size, parse_duration_ns, parse_size

__all__ = [
    "KERNEL_UPDATE_CAUSES",
    "KMSG_SOURCE_PREFIX",
    "KmsgRecord",
    "KmsgSource",
    "classify",
    "kernel_update_causes",
    "kmsg_readable",
    "parse_kmsg_lines",
    "block_size_bytes",
    "cpus_online",
    "crash_hotplug",
    "kexec_crash_loaded",
    "memory_blocks_online",
    "ALL_CHANGES",
    "GROUPS",
    "UEVENT_ALWAYS",
    "Capability",
    "Change",
    "Coverage",
    "all_checks",
    "events_covered",
    "per_block",
    "plan_coverage",
    "run_can_work",
    "BpfPlan",
    "BpfSource",
    "MemoryProbe",
    "ProgramSpec",
    "RecordError",
    "Uevent",
    "UeventError",
    "UeventSource",
    "decode_record",
    "parse_uevent",
    "plan_program",
    "render",
    "uevent_to_event",
    "SCENARIOS",
    "SOURCE_SPECS",
    "ReplaySource",
    "Scenario",
    "SourceSelection",
    "build_scenario",
    "format_size",
    "open_sources",
    "parse_duration_ns",
    "parse_size",
    "replay_scenario",
    "replay_trace",
    "EventSource",
]
