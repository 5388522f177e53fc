"""Fixtures of the VM tier: the cached assets and a factory of booted guests.

Every guest made through ``boot_guest`` is closed (qemu killed) when the test
ends, pass or fail; the tests of this tier run one qemu at a time.

Guest kernels: every test that boots a guest (through ``vm_assets``) is
parametrised over the kernels its ``kernels`` marker names, with the kernel
as the test id (``test_x[6.1]``, ``test_x[6.12]``); without the marker it runs
on 6.1 only.  A ``kernels`` mark on one ``pytest.param`` narrows that case
further: a case runs on the kernels that every one of its marks names
(``pytest.param("kexec_file_load", marks=pytest.mark.kernels("6.1"))``).
Which tests run on 6.12, and why, is in docs/vm-testbed.md ("Kernels").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testbed.harness import DEFAULT_KERNEL, KERNELS, Guest, GuestConfig, VmAssets, vm_unavailable_reason

BootGuest = Callable[..., Guest]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"kernels(*names): guest kernels a vm test runs on (of {', '.join(KERNELS)}; default {DEFAULT_KERNEL})",
    )


def _kernels(marker: pytest.Mark | None) -> tuple[str, ...]:
    names = tuple(marker.args) if marker is not None else (DEFAULT_KERNEL,)
    unknown = [n for n in names if n not in KERNELS]
    if unknown or not names:
        raise pytest.UsageError(f"kernels{names}: the VM tier's kernels are {', '.join(KERNELS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vm_kernel" not in metafunc.fixturenames:
        return
    names = _kernels(metafunc.definition.get_closest_marker("kernels"))
    metafunc.parametrize("vm_kernel", names, ids=list(names), indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the cases a pytest.param's own ``kernels`` mark leaves out (every kernels mark must name the kernel)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        kernel = callspec.params.get("vm_kernel") if callspec is not None else None
        if kernel is not None and any(kernel not in _kernels(m) for m in item.iter_markers("kernels")):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def vm_kernel(request: pytest.FixtureRequest) -> str:
    """The guest kernel of this test (a testbed.harness.KERNELS name), set by pytest_generate_tests."""
    return str(request.param)


@pytest.fixture(scope="session")
def vm_assets(vm_kernel: str) -> VmAssets:
    reason = vm_unavailable_reason(vm_kernel)
    if reason:
        pytest.skip(reason)
    return VmAssets.load(kernel=vm_kernel)


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
