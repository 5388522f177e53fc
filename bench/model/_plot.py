"""The timeline plot: one lane per strategy with its events, reloads, windows
without a crash kernel and stale periods.  matplotlib is imported here only,
when a plot is asked for (it is a dev extra, not a runtime dependency)."""

from __future__ import annotations

from ground.errors import ConfigError, UnavailableError
from ._run import BenchResult

# A window shorter than this would not show at the plot's scale: it is
# widened to be visible (the table has the real figures).
_MIN_VISIBLE = 0.002


def plot(result: BenchResult, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise UnavailableError("bench --plot", "matplotlib is not installed", "pip install 'kdump-coalesce[dev]'") from exc

    runs = list(result.runs.values())
    end = max((r.end_s for r in runs), default=1.0)
    last = max((r.last_event_s for r in runs), default=0.0)
    # Show the burst and what follows it, not the coalescer's idle linger.
    settled = [r.total_s for r in runs if r.total_s is not None]
    horizon = min(end, max([last, *settled]) * 1.06 + 1.0)
    min_w = max(_MIN_VISIBLE * horizon, 1e-6)

    fig, ax = plt.subplots(figsize=(13, 1.3 + 1.05 * len(runs)), dpi=110)
    for lane, run in enumerate(reversed(runs)):
        y = lane * 1.0
        tl = run.timeline
        ax.broken_barh([(a, max(b - a, min_w)) for a, b in tl.stale if a < horizon], (y + 0.05, 0.25), facecolors="#f0a030", alpha=0.8)
        ax.broken_barh([(a, max(b - a, min_w)) for a, b in tl.windows if a < horizon], (y - 0.30, 0.25), facecolors="#d62728")
        if tl.events:
            ax.eventplot([t for t in tl.events if t < horizon], lineoffsets=y + 0.40, linelengths=0.12, linewidths=0.3, colors="#555555")
        ends = [b for _, b in tl.reloads if b < horizon]
        if ends:
            ax.plot(ends, [y - 0.40] * len(ends), linestyle="none", marker="^", markersize=3.5, color="#1f77b4")
        what = f"{run.metrics.reloads} reloads" if run.name != "kernel" else f"{run.updates} updates"
        label = f"{run.name}\n{what}\nno kdump {run.metrics.exposure_s:.3g} s"
        ax.text(-0.01 * horizon, y, label, ha="right", va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(runs) - 0.4)
    ax.set_xlim(0, horizon)
    ax.set_xlabel("seconds since the hotplug started (virtual clock)")
    ax.set_title(f"{result.scenario.name}: {result.scenario.description}", fontsize=10)
    ax.legend(
        handles=[
            Patch(color="#555555", label="events"),
            Patch(color="#1f77b4", label="reload done (^)"),
            Patch(color="#d62728", label="no crash kernel (short ones widened to show)"),
            Patch(color="#f0a030", label="stale header"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.9, bottom=0.22)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ConfigError(path, f"cannot write the plot: {exc.strerror}") from exc
    finally:
        plt.close(fig)
