"""Typed errors of the fast path.

They derive from :mod:`ground.errors` so that the CLI reports them as
one line with the right exit status.  Bad inputs (a kexec binary without a
purgatory, a file that is not a bzImage, a crash region too small for the
image) are :class:`~ground.errors.InputError`: nothing was loaded.  A
verification failure or a failed syscall is a runtime failure: the caller falls
back to the ``kexec`` backend and reports it.
"""

from __future__ import annotations

import errno as _errno
import os

from ground.errors import EXIT_FAILURE, InputError, KdumpCoalesceError


class PurgatoryError(InputError):
    """The purgatory object (or the binary that should embed it) is unusable."""


class BzImageError(InputError):
    """The capture kernel file is not a loadable x86_64 bzImage."""


class SegmentLayoutError(InputError):
    """The segments cannot be placed in the crash region by the kexec_load rules."""


class ElfcorehdrOverflowError(SegmentLayoutError):
    """A batch's elfcorehdr is larger than the slot reserved for it when the image was prepared.

    The prepared layout stays valid for smaller headers; the caller prepares a
    new image with more headroom (a full, slower rebuild) and loads that.
    """

    def __init__(self, size: int, capacity: int) -> None:
        super().__init__(
            "elfcorehdr",
            f"{size} bytes do not fit the {capacity}-byte slot reserved at prepare time "
            "(prepare again with a larger elfcorehdr capacity)",
        )
        self.size = size
        self.capacity = capacity


class VerificationError(KdumpCoalesceError):
    """The final segment set failed the independent check made before every load.

    Loading it could hang the machine at panic (purgatory spins forever on a
    digest mismatch) or fail in the kernel; the caller must not load it.
    """

    exit_status = EXIT_FAILURE

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"refusing to load: {what}: {detail}")
        self.what = what
        self.detail = detail


class DigestMismatchError(VerificationError):
    """The digest patched into the purgatory differs from a full recomputation."""

    def __init__(self, patched: bytes, recomputed: bytes) -> None:
        super().__init__(
            "purgatory sha256_digest",
            f"patched {patched.hex()[:16]}... but the segments hash to {recomputed.hex()[:16]}...",
        )
        self.patched = patched
        self.recomputed = recomputed


# Why a kexec_load(2) call fails, as the kernel's kexec_load_check /
# sanity_check_segment_list / do_kexec_load return it (kernel/kexec.c,
# kernel/kexec_core.c).
_KEXEC_ERRNO_HINTS: dict[int, str] = {
    _errno.EPERM: "needs CAP_SYS_BOOT, or kexec_load is disabled (kernel.kexec_load_disabled, lockdown)",
    _errno.EBUSY: "the kexec lock is held (another load, or the kernel updating a crash image)",
    _errno.EADDRNOTAVAIL: "a segment or the entry point lies outside the crash kernel region",
    _errno.EINVAL: "the segment list breaks a kexec_load rule (alignment, overlap, bufsz > memsz, flags)",
    _errno.ENOMEM: "the kernel could not allocate the image or its control pages",
    _errno.ENOSYS: "this kernel has no kexec_load (CONFIG_KEXEC off)",
    _errno.EFAULT: "a segment buffer pointer is invalid",
}


class KexecLoadError(KdumpCoalesceError):
    """kexec_load(2) failed; ``errno`` says why.  No crash kernel may be loaded now."""

    exit_status = EXIT_FAILURE

    def __init__(self, err: int) -> None:
        name = _errno.errorcode.get(err, str(err))
        hint = _KEXEC_ERRNO_HINTS.get(err, os.strerror(err))
        super().__init__(f"kexec_load failed with {name}: {hint}")
        self.errno = err
        self.hint = hint
