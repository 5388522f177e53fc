"""Which live source follows which kernel change, under auto/bpf/uevent,
with and without BPF memory probes: the pure split (``plan_coverage``) and
``open_sources`` wired with a BPF source whose plan is given and a uevent
source on a fake kernel endpoint (no root, no kernel)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from ground.errors import UnavailableError
from ground.events import Action, Kind
from probes import BpfPlan, BpfSource, MemoryProbe, ProgramSpec, UeventSource, open_sources
from probes import _select
from probes._coverage import (
    ALL_CHANGES,
    CPU_ADD_REMOVE,
    CPU_ONLINE_OFFLINE,
    MEMORY_ADD_REMOVE,
    MEMORY_ONLINE_OFFLINE,
    changes_of,
    describe,
)
from probes._select import plan_coverage

EVERYTHING = CPU_ONLINE_OFFLINE | MEMORY_ONLINE_OFFLINE | MEMORY_ADD_REMOVE  # a Debian kernel: fentry or kprobes
THIS_HOST = CPU_ONLINE_OFFLINE  # cpuhp only: no kprobes, fentry refused
ONLINE_OFFLINE_ONLY = CPU_ONLINE_OFFLINE | MEMORY_ONLINE_OFFLINE  # try_remove_memory not probeable


@pytest.mark.parametrize(
    ("spec", "bpf_can", "bpf", "uevent"),
    [
        # Memory add/remove and CPU add/remove always come from uevents too.
        ("auto", EVERYTHING, EVERYTHING, CPU_ADD_REMOVE | MEMORY_ADD_REMOVE),
        ("auto", ONLINE_OFFLINE_ONLY, ONLINE_OFFLINE_ONLY, CPU_ADD_REMOVE | MEMORY_ADD_REMOVE),
        ("auto", THIS_HOST, THIS_HOST, CPU_ADD_REMOVE | MEMORY_ONLINE_OFFLINE | MEMORY_ADD_REMOVE),
        ("auto", None, frozenset(), ALL_CHANGES),  # BPF unusable: uevents for everything
        ("bpf", EVERYTHING, EVERYTHING, CPU_ADD_REMOVE | MEMORY_ADD_REMOVE),
        ("bpf", ONLINE_OFFLINE_ONLY, ONLINE_OFFLINE_ONLY, CPU_ADD_REMOVE | MEMORY_ADD_REMOVE),
        ("uevent", None, frozenset(), ALL_CHANGES),
    ],
)
def test_who_follows_what(spec: str, bpf_can: frozenset[Any] | None, bpf: frozenset[Any], uevent: frozenset[Any]) -> None:
    plan = plan_coverage(spec, ALL_CHANGES, bpf_can)
    assert (plan.bpf, plan.uevent, plan.missing) == (bpf, uevent, frozenset())
    # The point of issue 12: no configuration leaves a removal to nobody.
    for change in ALL_CHANGES:
        assert change in plan.bpf | plan.uevent
    assert MEMORY_ADD_REMOVE <= plan.uevent and CPU_ADD_REMOVE <= plan.uevent


def test_bpf_without_memory_probes_is_missing_online_offline() -> None:
    plan = plan_coverage("bpf", ALL_CHANGES, THIS_HOST)
    assert plan.missing == MEMORY_ONLINE_OFFLINE
    assert plan_coverage("bpf", ALL_CHANGES, None).missing == CPU_ONLINE_OFFLINE | MEMORY_ONLINE_OFFLINE
    # trace --kind cpu --source bpf on this host is fine: memory is not asked for.
    cpu = plan_coverage("bpf", changes_of({Kind.CPU}), THIS_HOST)
    assert (cpu.missing, cpu.bpf, cpu.uevent) == (frozenset(), CPU_ONLINE_OFFLINE, CPU_ADD_REMOVE)


def test_coverage_by_group_names_every_source() -> None:
    groups = plan_coverage("auto", ALL_CHANGES, EVERYTHING).by_group(ALL_CHANGES)
    assert groups == {
        "cpu online/offline": ("bpf",),
        "cpu add/remove": ("uevent",),
        "memory online/offline": ("bpf",),
        "memory add/remove": ("bpf", "uevent"),
    }
    assert list(plan_coverage("auto", changes_of({Kind.MEMORY}), None).by_group(changes_of({Kind.MEMORY}))) == [
        "memory online/offline",
        "memory add/remove",
    ]


def test_describe() -> None:
    assert describe(CPU_ADD_REMOVE | MEMORY_ADD_REMOVE) == "cpu add/remove, memory add/remove"
    assert describe({(Kind.MEMORY, Action.REMOVE)}) == "memory remove"
    assert describe(()) == "nothing"


# -- open_sources wired up, without root or a kernel ---------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def fileno(self) -> int:
        return self.a.fileno()

    def recv(self, bufsize: int, /) -> bytes:
        return self.a.recv(bufsize)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Root, 128 MiB blocks, a BPF source with the plan the test sets, and a
    uevent source on a socketpair."""
    state: dict[str, Any] = {"spec": None, "closed": 0}
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_select._sysfs, "block_size_bytes", lambda root="/": 128 << 20)

    def open_bpf(spec: str, kinds: Any, kexec_log: Any, block_size: Any, pages: int, notes: list[str]) -> BpfSource | None:
        if state["spec"] is None:
            if spec == "bpf":
                raise UnavailableError("bpf program", "no BCC")
            return None
        source = BpfSource(BpfPlan(state["spec"], [], "kprobes/fentry missing (test)"), block_size=block_size, compiled=object())
        source.close = lambda: state.__setitem__("closed", state["closed"] + 1)  # type: ignore[method-assign]
        return source

    monkeypatch.setattr(_select, "_open_bpf", open_bpf)
    real = UeventSource.__init__

    def uevent_init(self: UeventSource, **kwargs: Any) -> None:
        real(self, **kwargs, socket_factory=FakeSocket)

    monkeypatch.setattr(UeventSource, "__init__", uevent_init)
    return state


def uevents_of(selection: _select.SourceSelection) -> UeventSource:
    (source,) = [s for s in selection.sources if isinstance(s, UeventSource)]
    return source


def test_auto_on_a_debian_kernel_keeps_add_remove_uevents_beside_bpf(fake_host: dict[str, Any]) -> None:
    fake_host["spec"] = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144, memory=MemoryProbe.KPROBE, presence=MemoryProbe.KPROBE)
    selection = open_sources("auto")
    assert [type(s) for s in selection.sources] == [BpfSource, UeventSource]
    assert uevents_of(selection).changes == CPU_ADD_REMOVE | MEMORY_ADD_REMOVE
    assert selection.coverage["memory add/remove"] == ("bpf", "uevent")
    assert selection.coverage["cpu add/remove"] == ("uevent",)
    assert selection.notes == [
        "auto: bpf for cpu online/offline, memory online/offline, memory add/remove",
        "auto: uevent for cpu add/remove, memory add/remove (netlink NETLINK_KOBJECT_UEVENT, receive buffer 32 MiB; "
        "alongside bpf for memory add/remove, counted once)",
    ]
    uevents_of(selection).close()


def test_auto_on_this_host_takes_memory_from_uevents(fake_host: dict[str, Any]) -> None:
    fake_host["spec"] = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144)
    selection = open_sources("auto")
    assert uevents_of(selection).changes == CPU_ADD_REMOVE | MEMORY_ONLINE_OFFLINE | MEMORY_ADD_REMOVE
    assert selection.coverage == {
        "cpu online/offline": ("bpf",),
        "cpu add/remove": ("uevent",),
        "memory online/offline": ("uevent",),
        "memory add/remove": ("uevent",),
    }
    uevents_of(selection).close()


def test_auto_without_bpf_and_uevent_take_everything_from_uevents(fake_host: dict[str, Any]) -> None:
    for spec in ("auto", "uevent"):
        selection = open_sources(spec)
        assert [type(s) for s in selection.sources] == [UeventSource]
        assert uevents_of(selection).changes == ALL_CHANGES
        uevents_of(selection).close()


def test_bpf_means_bpf_plus_the_uevents_it_cannot_replace(fake_host: dict[str, Any]) -> None:
    # try_remove_memory not probeable: bpf still starts; removals from uevents.
    fake_host["spec"] = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144, memory=MemoryProbe.FENTRY,
                                    memory_params={"online_pages": 4, "offline_pages": 4})
    selection = open_sources("bpf")
    assert uevents_of(selection).changes == CPU_ADD_REMOVE | MEMORY_ADD_REMOVE
    assert selection.notes[0] == "bpf for cpu online/offline, memory online/offline"
    assert selection.coverage["memory add/remove"] == ("uevent",)
    uevents_of(selection).close()


def test_bpf_without_memory_online_offline_fails_loudly(fake_host: dict[str, Any]) -> None:
    fake_host["spec"] = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144)
    with pytest.raises(UnavailableError) as info:
        open_sources("bpf")
    assert str(info.value).startswith("--source bpf for memory online/offline")
    assert "kprobes/fentry missing" in str(info.value) and "--source auto" in str(info.value)
    assert fake_host["closed"] == 1  # the loaded program is detached
    # asking for CPUs only is fine
    selection = open_sources("bpf", kinds=frozenset({Kind.CPU}))
    assert uevents_of(selection).changes == CPU_ADD_REMOVE
    uevents_of(selection).close()
