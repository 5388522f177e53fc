"""Shared fixtures of the kernel tier (live host, root)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CPU1_ONLINE = Path("/sys/devices/system/cpu/cpu1/online")
# Held while a test takes cpu1 offline, so that two test runs on one host
# (two developers, or a developer and CI) never toggle it under each other.
HOTPLUG_LOCK = "/run/lock/kdump-coalesce-cpu-hotplug.lock"


@pytest.fixture
def cpu1() -> Iterator[Path]:
    """cpu1's ``online`` file, online at start and put back online whatever
    the test does."""
    if not CPU1_ONLINE.exists():
        pytest.skip("cpu1 cannot be taken offline on this host (no cpu1/online)")
    os.makedirs(os.path.dirname(HOTPLUG_LOCK), exist_ok=True)
    with open(HOTPLUG_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            CPU1_ONLINE.write_text("1\n")
            yield CPU1_ONLINE
        finally:
            CPU1_ONLINE.write_text("1\n")
    assert CPU1_ONLINE.read_text().strip() == "1"
