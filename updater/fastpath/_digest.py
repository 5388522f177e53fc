"""SHA-256 over the segments, the way kexec-tools' purgatory checks it at panic.

The digest covers every segment except the purgatory's own, in ascending
address order, each as its buffer followed by ``memsz - bufsz`` zero bytes
(kexec-tools ``update_purgatory``, kexec/kexec.c).  ``sha256_regions`` lists
the same segments as ``{start, memsz}``.

Two implementations on purpose:

* :class:`PrefixDigest` (pycryptodome) hashes the segments that never change
  once, at prepare time, and hands out copies of that state; a batch only
  feeds it the segments after the prefix (the elfcorehdr).
* :func:`recompute_digest` (hashlib/OpenSSL) is the independent check made
  from the final buffers before every load.  It shares no state and no code
  path with the cache, so a corrupted cached state, a stale buffer or a wrong
  region table cannot agree with it by accident.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from Crypto.Hash import SHA256
else:
    # PyPI's pycryptodome installs the ``Crypto`` namespace; Debian's
    # python3-pycryptodome (bookworm 3.11, trixie 3.20) is built from
    # pycryptodomex and installs the same API as ``Cryptodome`` only.
    try:
        from Crypto.Hash import SHA256
    except ImportError:
        from Cryptodome.Hash import SHA256

from ._purgatory import SHA256_REGION_SIZE, SHA256_REGIONS
from ._segments import Segment

_ZEROS = bytes(1 << 20)


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...


def _feed(h: _Hash, segment: Segment) -> None:
    h.update(segment.buf)
    pad = segment.memsz - segment.bufsz
    zeros = memoryview(_ZEROS)
    while pad > 0:
        n = min(pad, len(_ZEROS))
        h.update(zeros[:n])
        pad -= n


def sha256_regions(segments: Sequence[Segment]) -> bytes:
    """The purgatory's ``sha256_regions`` table for the hashed segments (ascending, zero padded)."""
    if len(segments) > SHA256_REGIONS:
        raise ValueError(f"{len(segments)} hashed segments exceed the purgatory's {SHA256_REGIONS} regions")
    table = bytearray(SHA256_REGIONS * SHA256_REGION_SIZE)
    for i, s in enumerate(segments):
        struct.pack_into("<QQ", table, i * SHA256_REGION_SIZE, s.mem, s.memsz)
    return bytes(table)


def parse_sha256_regions(table: bytes) -> list[tuple[int, int]]:
    """The non-empty ``(start, len)`` entries of a ``sha256_regions`` table."""
    out = []
    for i in range(len(table) // SHA256_REGION_SIZE):
        start, length = struct.unpack_from("<QQ", table, i * SHA256_REGION_SIZE)
        if start or length:
            out.append((start, length))
    return out


class PrefixDigest:
    """The SHA-256 state after the segments that never change, reused by every batch."""

    def __init__(self, prefix: Sequence[Segment]) -> None:
        h = SHA256.new()
        for s in prefix:
            _feed(h, s)
        self._state = h
        self.prefix = tuple((s.mem, s.memsz) for s in prefix)

    def digest_with(self, tail: Sequence[Segment]) -> bytes:
        """Digest of prefix + ``tail``; the cached state itself is never advanced."""
        h = self._state.copy()
        for s in tail:
            _feed(h, s)
        return bytes(h.digest())


def recompute_digest(segments: Sequence[Segment]) -> bytes:
    """The full digest of ``segments`` from scratch, with hashlib (independent of :class:`PrefixDigest`)."""
    h = hashlib.sha256()
    for s in segments:
        _feed(h, s)
    return h.digest()


class AttestedPrefix:
    """An independent (hashlib) state over the prefix, tied to the exact buffer objects it hashed.

    ``bytes`` are immutable, so a final segment whose ``buf`` *is* the
    attested object, at the same address and size, has the content that was
    hashed at prepare time.  :func:`verify` can then resume from this state
    instead of re-hashing the kernel and initrd on every load.
    """

    def __init__(self, prefix: Sequence[Segment]) -> None:
        h = hashlib.sha256()
        for s in prefix:
            _feed(h, s)
        self._state = h
        self._segments = tuple(prefix)

    def matches(self, segments: Sequence[Segment]) -> bool:
        if len(segments) < len(self._segments):
            return False
        return all(
            a.buf is b.buf and a.mem == b.mem and a.memsz == b.memsz
            for a, b in zip(self._segments, segments)
        )

    def digest_with(self, tail: Sequence[Segment]) -> bytes:
        h = self._state.copy()
        for s in tail:
            _feed(h, s)
        return h.digest()

    @property
    def length(self) -> int:
        return len(self._segments)
