"""Fixtures of the VM tier: the cached assets and a factory of booted guests.

Every guest made through ``boot_guest`` is closed (qemu killed) when the test
ends, pass or fail; the tests of this tier run one qemu at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testbed.harness import Guest, GuestConfig, VmAssets, vm_unavailable_reason

BootGuest = Callable[..., Guest]


@pytest.fixture(scope="session")
def vm_assets() -> VmAssets:
    reason = vm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return VmAssets.load()


@pytest.fixture
def boot_guest(vm_assets: VmAssets, request: pytest.FixtureRequest) -> Iterator[BootGuest]:
    """``g = boot_guest(GuestConfig(...))``: a booted guest, killed at teardown."""
    guests: list[Guest] = []

    def boot(config: GuestConfig | None = None) -> Guest:
        for old in guests:
            old.close()  # one qemu at a time: 2 cores shared with everyone
        g = Guest(vm_assets, config, name=request.node.name[:40].replace("/", "_"))
        guests.append(g)
        g.start()
        return g

    try:
        yield boot
    finally:
        for g in guests:
            g.close()
