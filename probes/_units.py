"""Sizes and durations as operators write them: ``128M``, ``32G``, ``10ms``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*$")
_DURATION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``128M``, ``32GiB``, ``0x8000000`` (binary multiples)."""
    if text.lower().startswith("0x"):
        return int(text, 16)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 128M, 32G, 4096)")
    value = float(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
    if value != int(value):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def parse_duration_ns(text: str) -> int:
    """Nanoseconds from ``10ms``, ``1.5s``, ``250us``, ``0`` (bare numbers are seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 10ms, 1s, 0)")
    return int(float(m.group(1)) * _DURATION_NS[m.group(2) or "s"])


def format_size(n: int) -> str:
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)
