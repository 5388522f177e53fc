"""The coalescer: merges bursts of hotplug events into batches.

Pure core (:class:`RangeSet`, :class:`BatchBuilder`, :class:`Coalescer`,
:func:`coalesce`) plus a trio stage (:class:`CoalescerStage`,
:func:`run_pipeline`) that closes a batch when no event arrived for ``quiet``
seconds or ``max_delay`` after its first event, and hands batches to one
:class:`BatchConsumer` (the updater) one at a time.
"""

from ._batch import BatchBuilder, NetPair
from ._core import Coalescer, OpenBatch, coalesce
from ._dedup import Deduplicator
from ._policy import Policy
from ._rangeset import RangeSet
from ._recorder import BatchRecorder, TraceObserver
from ._stage import BatchConsumer, CoalescerStage, run_pipeline

__all__ = [
    "BatchBuilder",
    "BatchRecorder",
    "BatchConsumer",
    "Coalescer",
    "CoalescerStage",
    "Deduplicator",
    "NetPair",
    "OpenBatch",
    "Policy",
    "RangeSet",
    "TraceObserver",
    "coalesce",
    "run_pipeline",
]
