"""``bench vm-resize --plot``: the real run's timeline, drawn like the model's (bench/model/_plot.py).

One lane per strategy (and layout): the online uevents, each header installed
(a crash load's exit, or the kernel's own update), the windows without a
crash kernel; times are seconds since the strategy's first memory uevent, on
the guest's clock.  Stale periods are not drawn (the table has ``stale_s``).
"""

from __future__ import annotations

from typing import Any

from ground.errors import ConfigError, UnavailableError

_MIN_VISIBLE = 0.002


def plot_vm(doc: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise UnavailableError("bench --plot", "matplotlib is not installed", "pip install 'kdump-coalesce[dev]'") from exc

    lanes = [(k, d) for k, d in doc["details"].items() if not d.get("skipped") and d["timeline"]["t0"] is not None]
    if not lanes:
        raise ConfigError("--plot", "nothing to plot: no strategy recorded any memory uevent")
    horizon = 1.0
    for _, d in lanes:
        tl = d["timeline"]
        t0 = tl["t0"]
        ends = [t - t0 for t in tl["events"]] + [t - t0 for t in tl["installs"] if t >= t0]
        horizon = max(horizon, max(ends, default=0.0) * 1.04 + 1.0)
    min_w = max(_MIN_VISIBLE * horizon, 1e-6)
    fig, ax = plt.subplots(figsize=(13, 1.3 + 1.05 * len(lanes)), dpi=110)
    for lane, (key, d) in enumerate(reversed(lanes)):
        y = float(lane)
        tl = d["timeline"]
        t0 = tl["t0"]
        wins = [(a - t0, max(b - a, min_w)) for a, b in tl["windows"] if b >= t0]
        ax.broken_barh(wins, (y - 0.30, 0.25), facecolors="#d62728")
        if tl["events"]:
            ax.eventplot([t - t0 for t in tl["events"]], lineoffsets=y + 0.30, linelengths=0.25, linewidths=0.3, colors="#555555")
        inst = [t - t0 for t in tl["installs"] if t >= t0]
        if inst:
            ax.plot(inst, [y - 0.40] * len(inst), linestyle="none", marker="^", markersize=3.5, color="#1f77b4")
        m = doc["strategies"][key]
        what = f"{m['reloads']} reloads" if not d.get("kernel_updates") else f"{d['kernel_updates']} updates"
        if d.get("cutoff"):
            what += " (cut off)"
        ax.text(-0.01 * horizon, y, f"{key}\n{what}\nno kdump {m['exposure_s']:.3g} s", ha="right", va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_xlim(0, horizon)
    ax.set_xlabel("seconds since the strategy's first memory uevent (guest CLOCK_MONOTONIC)")
    title = f"vm-resize --scale {doc.get('scale')}: {doc.get('blocks')} blocks, real qemu (TCG) guest per strategy"
    ax.set_title(title + ("  [interrupted]" if doc.get("interrupted") else ""), fontsize=10)
    ax.legend(
        handles=[
            Patch(color="#555555", label="online uevents"),
            Patch(color="#1f77b4", label="header installed (^)"),
            Patch(color="#d62728", label="no crash kernel (short ones widened to show)"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.16, right=0.98, top=0.9, bottom=0.22)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ConfigError(path, f"cannot write the plot: {exc.strerror}") from exc
    finally:
        plt.close(fig)
