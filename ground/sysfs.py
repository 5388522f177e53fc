"""The sysfs formats more than one stage reads: pure parsers, and tiny readers.

Formats, as the kernel writes them:

- CPU lists (``/sys/devices/system/cpu/{possible,present,online,offline}``):
  ``%*pbl`` (``cpumap_print_list_to_buf``, lib/bitmap.c's range list), e.g.
  ``0-3,8``; ``offline`` may be an empty line.
- ``/sys/devices/system/memory/block_size_bytes``: ``%lx``
  (drivers/base/memory.c, ``block_size_bytes_show``): hex *without* ``0x``,
  128 MiB on most x86 machines, up to 2 GiB on large ones.

The parsers raise :class:`SysfsFormatError` naming the file; the readers take
a ``root`` prefix so that a tree captured from a host (tests/fixtures/host)
reads like the live one.  No ctypes, no writes: the stages keep their own
kernel-facing code.
"""

from __future__ import annotations

import os
import re

from .errors import InputError

SYS_CPU = "sys/devices/system/cpu"
SYS_MEMORY = "sys/devices/system/memory"

_CPU_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


class SysfsFormatError(InputError):
    """A sysfs file whose text is not in the format the kernel writes."""


def parse_cpu_list(text: str, source: str = "cpu list") -> tuple[int, ...]:
    """``0-3,8`` -> ``(0, 1, 2, 3, 8)``, sorted; an empty line is no CPU."""
    line = text.strip()
    if not line:
        return ()
    cpus: set[int] = set()
    for part in line.split(","):
        m = _CPU_RANGE.fullmatch(part.strip())
        if m is None:
            raise SysfsFormatError(source, f"not a CPU list (like 0-3,8): {line[:60]!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SysfsFormatError(source, f"descending CPU range {part!r}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def parse_block_size_bytes(text: str, source: str = "block_size_bytes") -> int:
    """The memory block size in bytes, from its hex-without-0x text."""
    value = text.strip()
    try:
        return int(value, 16)
    except ValueError:
        raise SysfsFormatError(source, f"not a hex number: {value[:40]!r}") from None


def _read(root: str, rel: str) -> str | None:
    try:
        with open(os.path.join(root, rel), encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None


def cpu_list(name: str, root: str = "/") -> tuple[int, ...] | None:
    """``/sys/devices/system/cpu/<name>`` (``online``, ``present``, ...); ``None`` when missing."""
    rel = f"{SYS_CPU}/{name}"
    text = _read(root, rel)
    return parse_cpu_list(text, os.path.join(root, rel)) if text is not None else None


def block_size_bytes(root: str = "/") -> int | None:
    """The memory block size; ``None`` when the file is missing (no
    CONFIG_MEMORY_HOTPLUG) or holds no positive hex number."""
    rel = f"{SYS_MEMORY}/block_size_bytes"
    text = _read(root, rel)
    if text is None:
        return None
    try:
        value = parse_block_size_bytes(text, os.path.join(root, rel))
    except SysfsFormatError:
        return None
    return value if value > 0 else None
