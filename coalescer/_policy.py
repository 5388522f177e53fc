"""When a batch closes: the quiet / max_delay policy.

Every reload is a window with no crash kernel loaded at all: the kernel frees
the old crash image before it copies the new one (kernel/kexec.c,
``do_kexec_load``), and ``__crash_kexec`` only trylocks, so a panic inside the
syscall leaves no dump.  So reloads should be few.  But the two kinds of
staleness are not alike:

- A header that *lacks* newly added memory or CPUs still gives a useful dump:
  everything the crashed kernel had at boot is there.  Additions can wait for
  the burst to settle.
- A header that still lists memory that is *gone* makes the capture kernel
  read addresses with nothing behind them (makedumpfile stalls or the dump is
  garbage), and a CPU note of a removed CPU points at freed per-CPU memory.
  Removals are urgent.

Defaults:

- ``quiet = 1.0`` s: a DIMM's blocks online ~10 ms apart under qemu (8 blocks
  in 0.07-0.11 s, kernel-facts.md section 7) and management stacks add DIMMs
  back to back, so one second without an event reliably means the burst is
  over, while RHEL's throttler waits 1 s + up to 3 s of ``udevadm settle``.
- ``max_delay = 30`` s: the longest an addition waits during a continuous
  storm; a 480 x 1 GiB resize that streams for minutes then costs one reload
  per 30 s rather than one per event.
- ``urgent_max_delay = 5`` s once the batch holds an offline/remove: a stale
  header listing gone memory lives seconds, not the 30 s an addition may wait.
- ``urgent_quiet = 1.0`` s, the same as ``quiet``: a removal must not close
  its batch *sooner* after the last event than an addition would.  Offlining
  migrates pages, so blocks go offline further apart than they come online:
  in the VM tier (TCG) the 8 blocks of one 1 GiB DIMM went offline more than
  0.25 s apart, and a 0.25 s urgent quiet made 8 batches of one removal.
  virtio-mem offlines *and removes* block by block, so each of those batches
  would have been a reload: one window per block, the very pathology this
  daemon exists to remove.  The cap (``urgent_max_delay``) is what makes
  removals urgent; the quiet period is what makes them one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ground.config import option
from ground.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Policy:
    quiet: float = option(1.0, cli=True, help="close a batch after this many seconds without an event")
    max_delay: float = option(30.0, cli=True, help="close a batch at most this many seconds after its first event")
    urgent_quiet: float = option(1.0, cli=True, help="quiet period once a batch holds an offline/remove")
    urgent_max_delay: float = option(5.0, cli=True, help="max delay once a batch holds an offline/remove")
    channel_size: int = option(4096, help="capacity of the bounded channel from the sources (backpressure beyond it)")
    dedup_window: float = option(2.0, help="seconds within which the same change from two sources counts once")

    def __post_init__(self) -> None:
        for name in ("quiet", "max_delay", "urgent_quiet", "urgent_max_delay"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[coalescer] {name.replace('_', '-')}", "must be > 0")
        if self.dedup_window < 0:
            raise ConfigError("[coalescer] dedup-window", "must be >= 0")
        if self.max_delay < self.quiet:
            raise ConfigError("[coalescer] max-delay", f"must be >= quiet ({self.quiet})")
        if self.urgent_max_delay < self.urgent_quiet:
            raise ConfigError("[coalescer] urgent-max-delay", f"must be >= urgent-quiet ({self.urgent_quiet})")
        if self.channel_size < 1:
            raise ConfigError("[coalescer] channel-size", "must be >= 1")

    def close_at(self, opened: float, last: float, urgent_since: float | None) -> tuple[float, str]:
        """The time at which a batch closes, and why.

        ``opened``: arrival of its first item; ``last``: arrival of its latest;
        ``urgent_since``: arrival of its first removal, if any.
        """
        deadline, reason = last + self.quiet, "quiet"
        if opened + self.max_delay < deadline:
            deadline, reason = opened + self.max_delay, "max_delay"
        if urgent_since is not None:
            if last + self.urgent_quiet < deadline:
                deadline, reason = last + self.urgent_quiet, "urgent_quiet"
            if urgent_since + self.urgent_max_delay < deadline:
                deadline, reason = urgent_since + self.urgent_max_delay, "urgent_max_delay"
        return deadline, reason
