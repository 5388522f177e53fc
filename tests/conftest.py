"""Test tiers.

- unit (no marker): pure, no root, no kernel access.
- ``kernel``: the live host (BPF, CPU hotplug, uevents).  Needs root; every
  test restores what it changes.
- ``vm``: boots a qemu guest with a real kdump-capable kernel.

Root-only tiers skip with a reason when not root.  When
``KDUMP_COALESCE_REQUIRE_TIERS`` names a tier (``./bootstrap test`` sets
``kernel,vm`` as root, so CI always does), a skip in that tier is reported as a
failure: a skipped tier is not a passed tier.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import settings

# Tests assert behaviour, not timings: no per-example deadline (the machine is
# shared and has two cores).
settings.register_profile("kdump-coalesce", deadline=None, print_blob=True)
settings.load_profile("kdump-coalesce")

ROOT_TIERS = ("kernel", "vm")


def _required_tiers() -> set[str]:
    raw = os.environ.get("KDUMP_COALESCE_REQUIRE_TIERS", "")
    return {t.strip() for t in raw.split(",") if t.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        for tier in ROOT_TIERS:
            if tier in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{tier} tier needs root"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped:
        required = _required_tiers()
        tiers = [t for t in ROOT_TIERS if t in item.keywords and t in required]
        if tiers:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"{tiers[0]} tier is required here (KDUMP_COALESCE_REQUIRE_TIERS) but skipped: {reason}"
    return report
