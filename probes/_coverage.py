"""Which kernel changes a source follows: the vocabulary of source coverage.

The elfcorehdr lists every ``System RAM`` resource of /proc/iomem and a crash
note per present CPU.  An iomem resource appears when memory is *added*
(``add_memory_resource``) and disappears when it is *removed*
(``try_remove_memory`` -> ``release_mem_region_adjustable``); online and
offline change neither.  So the changes that matter come in four pairs, and
every configuration must follow all four (docs/probes.md, "What each probe
follows"):

========================  =====================================  ==========================
change                    BPF                                    uevent
========================  =====================================  ==========================
cpu online/offline        raw tracepoint ``cpuhp_exit``          ``cpu`` online/offline
cpu add/remove            (no probe)                             ``cpu`` add/remove
memory online/offline     ``online_pages``/``offline_pages``     ``memory`` online/offline
memory add/remove         ``add_memory_resource``/               ``memory`` add/remove
                          ``try_remove_memory``
========================  =====================================  ==========================

The uevents of the add/remove pairs are opened in every live configuration
(:data:`UEVENT_ALWAYS`), even where BPF probes memory add/remove: they come
from the device model (``device_add``/``device_del`` of the memory block or
CPU device) on every path, while a function probe only sees the calls that
go through the one copy of the function it is attached to.
"""

from __future__ import annotations

from collections.abc import Iterable

from ground.events import Action, Kind

Change = tuple[Kind, Action]

CPU_ONLINE_OFFLINE: frozenset[Change] = frozenset({(Kind.CPU, Action.ONLINE), (Kind.CPU, Action.OFFLINE)})
CPU_ADD_REMOVE: frozenset[Change] = frozenset({(Kind.CPU, Action.ADD), (Kind.CPU, Action.REMOVE)})
MEMORY_ONLINE_OFFLINE: frozenset[Change] = frozenset({(Kind.MEMORY, Action.ONLINE), (Kind.MEMORY, Action.OFFLINE)})
MEMORY_ADD_REMOVE: frozenset[Change] = frozenset({(Kind.MEMORY, Action.ADD), (Kind.MEMORY, Action.REMOVE)})

# In display order; each group is what one probe (or uevent pair) follows.
GROUPS: tuple[tuple[str, frozenset[Change]], ...] = (
    ("cpu online/offline", CPU_ONLINE_OFFLINE),
    ("cpu add/remove", CPU_ADD_REMOVE),
    ("memory online/offline", MEMORY_ONLINE_OFFLINE),
    ("memory add/remove", MEMORY_ADD_REMOVE),
)
ALL_CHANGES: frozenset[Change] = frozenset().union(*(g for _, g in GROUPS))

# What the BPF program can follow on a kernel that lets it (cpu add/remove
# has no probe: register_cpu/unregister_cpu are left to the uevents).
BPF_PROBEABLE: frozenset[Change] = CPU_ONLINE_OFFLINE | MEMORY_ONLINE_OFFLINE | MEMORY_ADD_REMOVE
# What ``--source bpf`` requires BPF itself to follow (else it fails loudly).
BPF_REQUIRED: frozenset[Change] = CPU_ONLINE_OFFLINE | MEMORY_ONLINE_OFFLINE
# Opened from uevents in every live configuration, BPF or not.
UEVENT_ALWAYS: frozenset[Change] = CPU_ADD_REMOVE | MEMORY_ADD_REMOVE


def changes_of(kinds: Iterable[Kind]) -> frozenset[Change]:
    wanted = frozenset(kinds)
    return frozenset(c for c in ALL_CHANGES if c[0] in wanted)


def describe(changes: Iterable[Change]) -> str:
    """``cpu online/offline, memory add/remove``: the groups ``changes`` covers
    (a group partly covered is spelled out action by action)."""
    have = frozenset(changes)
    parts: list[str] = []
    for label, group in GROUPS:
        if group <= have:
            parts.append(label)
        else:
            kind = label.split(" ", 1)[0]
            parts.extend(f"{kind} {action}" for k, action in sorted(group & have) if k.value == kind)
    return ", ".join(parts) if parts else "nothing"
