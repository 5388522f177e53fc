"""Synthetic scenarios: named, parameterised event streams for tests and the bench.

Spec syntax: ``NAME[:POSITIONAL...][:key=value...]``, sizes like ``128M``/``32G``,
durations like ``10ms``.  Timestamps start at 1 s and advance by the
configured intervals, so a scenario is fully deterministic.

- ``resize:FROM:TO`` grows RAM from FROM to TO bytes in blocks of ``block``
  (default 128M).  Options: ``dimm=SIZE`` (size of each DIMM; default one DIMM
  for the whole growth), ``interval=DUR`` between blocks (default 10ms, what a
  DIMM's blocks take to online under qemu), ``dimm_gap=DUR`` between DIMMs
  (default 100ms), ``add=yes`` to model the ``add`` event that precedes each
  ``online`` (default no: exactly one ``online`` per block, the event the
  distro udev rules reload on).  ``resize:32G:512G`` is the RFC's one 480 GiB
  DIMM: 3840 online events; ``resize:32G:512G:dimm=1G`` the 480 x 1 GiB case.
- ``shrink:FROM:TO`` (FROM > TO): offline then remove each block, highest first.
- ``churn:SIZE``: SIZE added and onlined, then offlined and removed, in one
  burst: a net-empty batch.
- ``cpu:FROM:TO``: CPUs FROM..TO-1 added and onlined (FROM < TO), or
  TO..FROM-1 offlined and removed (FROM > TO); ``interval=DUR`` (default 50ms).

Hot-added memory starts where boot RAM ends in the usual x86_64 layout: RAM
up to 3 GiB below the 4 GiB hole and the rest above it, so FROM bytes of boot
RAM end at FROM + 1 GiB (override with ``base=ADDR``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ground.errors import ScenarioError

from ground.events import Action, HotplugEvent, Kind
from ._units import format_size, parse_duration_ns, parse_size

SOURCE = "scenario"
T0_NS = 1_000_000_000
GIB = 1 << 30
DEFAULT_BLOCK = 128 << 20


@dataclass(frozen=True, slots=True)
class Scenario:
    spec: str
    description: str
    block_size: int
    events: tuple[HotplugEvent, ...]


def _boot_ram_end(boot: int) -> int:
    return boot + GIB if boot > 3 * GIB else boot


class _Args:
    def __init__(self, spec: str, positional: list[str], options: dict[str, str]) -> None:
        self.spec = spec
        self.positional = positional
        self.options = options
        self.used: set[str] = set()

    def pos(self, index: int, what: str, parse: Callable[[str], int]) -> int:
        if index >= len(self.positional):
            raise ScenarioError(self.spec, f"missing {what}")
        try:
            return parse(self.positional[index])
        except ValueError as exc:
            raise ScenarioError(self.spec, f"{what}: {exc}") from None

    def opt(self, key: str, default: int, parse: Callable[[str], int]) -> int:
        self.used.add(key)
        if key not in self.options:
            return default
        try:
            return parse(self.options[key])
        except ValueError as exc:
            raise ScenarioError(self.spec, f"{key}: {exc}") from None

    def flag(self, key: str, default: bool) -> bool:
        self.used.add(key)
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() in ("yes", "true", "1", "on"):
            return True
        if value.lower() in ("no", "false", "0", "off"):
            return False
        raise ScenarioError(self.spec, f"{key}: expected yes or no, got {value!r}")

    def finish(self, max_positional: int) -> None:
        if len(self.positional) > max_positional:
            raise ScenarioError(self.spec, f"too many arguments: {':'.join(self.positional[max_positional:])}")
        unknown = set(self.options) - self.used
        if unknown:
            raise ScenarioError(self.spec, f"unknown option(s): {', '.join(sorted(unknown))}")


def _mem(action: Action, t: int, start: int, size: int) -> HotplugEvent:
    return HotplugEvent(Kind.MEMORY, action, t, SOURCE, start=start, size=size)


def _resize(a: _Args) -> Scenario:
    boot = a.pos(0, "FROM size", parse_size)
    target = a.pos(1, "TO size", parse_size)
    block = a.opt("block", DEFAULT_BLOCK, parse_size)
    dimm = a.opt("dimm", target - boot, parse_size)
    interval = a.opt("interval", 10_000_000, parse_duration_ns)
    gap = a.opt("dimm_gap", 100_000_000, parse_duration_ns)
    base = a.opt("base", _boot_ram_end(boot), parse_size)
    with_add = a.flag("add", False)
    a.finish(2)
    if target <= boot:
        raise ScenarioError(a.spec, "resize needs TO > FROM (use shrink to remove memory)")
    growth = target - boot
    if block <= 0 or growth % block or dimm % block or base % block:
        raise ScenarioError(a.spec, f"sizes and base must be multiples of the block size {format_size(block)}")
    if dimm <= 0 or growth % dimm:
        raise ScenarioError(a.spec, f"growth {format_size(growth)} is not a whole number of {format_size(dimm)} DIMMs")
    events: list[HotplugEvent] = []
    t = T0_NS
    addr = base
    for d in range(growth // dimm):
        if d:
            t += gap
        for b in range(dimm // block):
            if b:
                t += interval
            if with_add:
                events.append(_mem(Action.ADD, t, addr, block))
            events.append(_mem(Action.ONLINE, t, addr, block))
            addr += block
    desc = f"resize {format_size(boot)} -> {format_size(target)}: {growth // dimm} DIMM(s) of {format_size(dimm)}, {growth // block} blocks of {format_size(block)}"
    return Scenario(a.spec, desc, block, tuple(events))


def _shrink(a: _Args) -> Scenario:
    current = a.pos(0, "FROM size", parse_size)
    target = a.pos(1, "TO size", parse_size)
    block = a.opt("block", DEFAULT_BLOCK, parse_size)
    interval = a.opt("interval", 10_000_000, parse_duration_ns)
    base = a.opt("base", _boot_ram_end(target), parse_size)
    with_remove = a.flag("remove", True)
    a.finish(2)
    if target >= current:
        raise ScenarioError(a.spec, "shrink needs FROM > TO")
    amount = current - target
    if block <= 0 or amount % block or base % block:
        raise ScenarioError(a.spec, f"sizes and base must be multiples of the block size {format_size(block)}")
    events: list[HotplugEvent] = []
    t = T0_NS
    for i, addr in enumerate(range(base + amount - block, base - 1, -block)):
        if i:
            t += interval
        events.append(_mem(Action.OFFLINE, t, addr, block))
        if with_remove:
            events.append(_mem(Action.REMOVE, t, addr, block))
    desc = f"shrink {format_size(current)} -> {format_size(target)}: {amount // block} blocks offlined{' and removed' if with_remove else ''}"
    return Scenario(a.spec, desc, block, tuple(events))


def _churn(a: _Args) -> Scenario:
    size = a.pos(0, "SIZE", parse_size)
    block = a.opt("block", DEFAULT_BLOCK, parse_size)
    interval = a.opt("interval", 10_000_000, parse_duration_ns)
    base = a.opt("base", 4 * GIB, parse_size)
    a.finish(1)
    if block <= 0 or size <= 0 or size % block or base % block:
        raise ScenarioError(a.spec, f"SIZE and base must be positive multiples of the block size {format_size(block)}")
    events: list[HotplugEvent] = []
    t = T0_NS
    blocks = list(range(base, base + size, block))
    for addr in blocks:
        events.append(_mem(Action.ADD, t, addr, block))
        events.append(_mem(Action.ONLINE, t, addr, block))
        t += interval
    for addr in reversed(blocks):
        events.append(_mem(Action.OFFLINE, t, addr, block))
        events.append(_mem(Action.REMOVE, t, addr, block))
        t += interval
    return Scenario(a.spec, f"churn {format_size(size)}: added, onlined, offlined, removed", block, tuple(events))


def _cpu(a: _Args) -> Scenario:
    first = a.pos(0, "FROM cpu count", int)
    last = a.pos(1, "TO cpu count", int)
    interval = a.opt("interval", 50_000_000, parse_duration_ns)
    a.finish(2)
    if first < 1 or last < 1 or first == last:
        raise ScenarioError(a.spec, "cpu needs two different CPU counts >= 1")
    events: list[HotplugEvent] = []
    t = T0_NS
    if last > first:
        for cpu in range(first, last):
            events.append(HotplugEvent(Kind.CPU, Action.ADD, t, SOURCE, cpu=cpu))
            events.append(HotplugEvent(Kind.CPU, Action.ONLINE, t, SOURCE, cpu=cpu))
            t += interval
        desc = f"cpu {first} -> {last}: CPUs {first}-{last - 1} added and onlined"
    else:
        for cpu in range(first - 1, last - 1, -1):
            events.append(HotplugEvent(Kind.CPU, Action.OFFLINE, t, SOURCE, cpu=cpu))
            events.append(HotplugEvent(Kind.CPU, Action.REMOVE, t, SOURCE, cpu=cpu))
            t += interval
        desc = f"cpu {first} -> {last}: CPUs {last}-{first - 1} offlined and removed"
    return Scenario(a.spec, desc, DEFAULT_BLOCK, tuple(events))


SCENARIOS: dict[str, Callable[[_Args], Scenario]] = {
    "resize": _resize,
    "shrink": _shrink,
    "churn": _churn,
    "cpu": _cpu,
}


def build_scenario(spec: str) -> Scenario:
    """Parse ``spec`` and generate its events; ScenarioError names what is wrong."""
    name, *rest = spec.split(":")
    maker = SCENARIOS.get(name)
    if maker is None:
        raise ScenarioError(spec, f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    positional: list[str] = []
    options: dict[str, str] = {}
    for part in rest:
        if "=" in part:
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
        elif options:
            raise ScenarioError(spec, f"positional argument {part!r} after key=value options")
        else:
            positional.append(part)
    return maker(_Args(spec, positional, options))
