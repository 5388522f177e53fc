"""The fast path: load the crash kernel with kexec_load(2) directly, one cheap rebuild per batch.

Prepare once, with everything that does not change while CPUs and memory
come and go::

    from updater import fastpath

    image = fastpath.prepare(fastpath.FastPathInputs(
        capture=fastpath.CaptureKernel(fastpath.load_bzimage(path), initrd, cmdline),
        purgatory=fastpath.load_purgatory("/sbin/kexec"),
        crash_regions=(...), iomem=(...), boot_params=open(...).read(),
    ))
    image.layout.backup.start   # the header's low-memory PT_LOAD points here

Then per batch::

    segment_set = image.build(elfcorehdr_bytes)      # microseconds + hashing the header slot
    verified = image.verify(segment_set)             # independent full check; raises on mismatch
    fastpath.kexec_load_crash(verified)              # the only call that touches the kernel

In the daemon, :func:`create_backend` (the ``kexec-fast`` backend, the hook
``updater`` looks for) does all of this per batch, and falls back to the
``kexec`` backend through the updater on any failure; :func:`create_stager`
lets ``dry-run`` stage the segment set; :func:`unavailable_reason` is what
``auto`` asks.

See docs/fast-path.md for the design.
"""

from ._backend import (
    FastPathEngine,
    FastPathSources,
    FastPathStager,
    KexecFastBackend,
    create_backend,
    create_engine,
    create_stager,
    iomem_ranges,
    kexec_load_refused,
    unavailable_reason,
)
from ._bootparams import BOOT_PARAMS_FIELDS, build_setup_segment, capture_cmdline
from ._bzimage import BzImage, load_bzimage, parse_bzimage
from ._digest import PrefixDigest, parse_sha256_regions, recompute_digest, sha256_regions
from ._errors import (
    BzImageError,
    DigestMismatchError,
    ElfcorehdrOverflowError,
    KexecLoadError,
    PurgatoryError,
    SegmentLayoutError,
    VerificationError,
)
from ._image import (
    DEFAULT_ELFCOREHDR_CAPACITY,
    CaptureKernel,
    FastPathInputs,
    Layout,
    PreparedImage,
    VerifiedSegmentSet,
    PurgatoryView,
    elfcorehdr_capacity_for,
    hotplug_slot_size,
    prepare,
    purgatory_view,
    verify_segment_set,
)
from ._kexec_syscall import KexecSegment, kexec_load_crash, segment_array
from ._memmap import E820Entry, E820Type, IomemRange, RangeKind, backup_source, capture_memory_map
from ._purgatory import (
    OPTIONAL_SYMBOLS,
    REQUIRED_SYMBOLS,
    PurgatoryBlob,
    PurgatoryFootprint,
    RelocatedPurgatory,
    extract_purgatory,
    load_purgatory,
    parse_purgatory,
    purgatory_footprint,
)
from ._segments import (
    CONTROL_PAGES,
    KEXEC_CRASH_FLAGS,
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_SEGMENT_MAX,
    KEXEC_UPDATE_ELFCOREHDR,
    Segment,
    SegmentKind,
    SegmentSet,
    check_kexec_rules,
)

__all__ = [
    "BOOT_PARAMS_FIELDS",
    "CONTROL_PAGES",
    "DEFAULT_ELFCOREHDR_CAPACITY",
    "KEXEC_CRASH_FLAGS",
    "KEXEC_CRASH_HOTPLUG_SUPPORT",
    "KEXEC_SEGMENT_MAX",
    "KEXEC_UPDATE_ELFCOREHDR",
    "OPTIONAL_SYMBOLS",
    "REQUIRED_SYMBOLS",
    "BzImage",
    "BzImageError",
    "CaptureKernel",
    "DigestMismatchError",
    "E820Entry",
    "E820Type",
    "FastPathEngine",
    "FastPathSources",
    "FastPathStager",
    "KexecFastBackend",
    "ElfcorehdrOverflowError",
    "FastPathInputs",
    "IomemRange",
    "KexecLoadError",
    "KexecSegment",
    "Layout",
    "PrefixDigest",
    "PreparedImage",
    "PurgatoryBlob",
    "PurgatoryError",
    "PurgatoryFootprint",
    "PurgatoryView",
    "RangeKind",
    "RelocatedPurgatory",
    "Segment",
    "SegmentKind",
    "SegmentLayoutError",
    "SegmentSet",
    "VerificationError",
    "VerifiedSegmentSet",
    "backup_source",
    "build_setup_segment",
    "capture_cmdline",
    "capture_memory_map",
    "check_kexec_rules",
    "create_backend",
    "create_engine",
    "create_stager",
    "iomem_ranges",
    "kexec_load_refused",
    "unavailable_reason",
    "elfcorehdr_capacity_for",
    "hotplug_slot_size",
    "extract_purgatory",
    "kexec_load_crash",
    "load_bzimage",
    "load_purgatory",
    "parse_bzimage",
    "parse_purgatory",
    "parse_sha256_regions",
    "prepare",
    "purgatory_footprint",
    "purgatory_view",
    "recompute_digest",
    "segment_array",
    "sha256_regions",
    "verify_segment_set",
]
