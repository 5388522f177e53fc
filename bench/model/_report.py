"""The bench's verdicts: the table, how close the model came to the published
figures, and the targets (kdump-coalesce against the distro strategies of the
same run)."""

from __future__ import annotations

from dataclasses import dataclass

from coalescer import Policy

from ._params import KDUMPCTL_RELOAD_RANGE, PUBLISHED, TOLERANCE
from ._run import BenchResult, ceil_bound
from ._strategies import DISTRO, KdumpCoalesce

KC = KdumpCoalesce.name


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    # A published figure used to fit a parameter cannot fail by construction
    # the way a prediction can; the report says which is which.
    role: str = ""


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "never"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def table(result: BenchResult) -> str:
    head = ("strategy", "reloads", "settle_s", "exposure_s", "max_window_s", "stale_s", "cpu_s", "total_s")
    rows = [head]
    for name, run in result.runs.items():
        m = run.metrics
        rows.append(
            (
                name,
                str(m.reloads) if name != "kernel" else f"0 ({run.updates} updates)",
                _fmt(m.settle_s),
                _fmt(m.exposure_s),
                _fmt(m.max_window_s),
                _fmt(m.stale_s),
                _fmt(m.cpu_s),
                _fmt(run.total_s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def published_checks(result: BenchResult) -> list[Check]:
    """How close the model came to every published figure for this scenario."""
    checks: list[Check] = []
    for pub in PUBLISHED:
        run = result.runs.get(pub.strategy)
        if pub.scenario != result.scenario.name or run is None:
            continue
        model = run.total_s
        if model is None:
            checks.append(Check(f"{pub.what}: {pub.total_s:g} s", False, "model never settled", pub.role))
            continue
        err = (model - pub.total_s) / pub.total_s
        checks.append(
            Check(
                f"{pub.what}: {pub.total_s:g} s",
                abs(err) <= TOLERANCE,
                f"model {model:.1f} s ({err:+.1%}, tolerance +-{TOLERANCE:.0%}) [{pub.strategy}]",
                pub.role,
            )
        )
    serial = result.runs.get("udev-serial")
    if serial is not None and result.scenario.name.startswith("resize-"):
        checks.append(
            Check(
                "RHEL7: all 3840 reloads",
                serial.metrics.reloads == 3840,
                f"model {serial.metrics.reloads} reloads [udev-serial]",
                "prediction",
            )
        )
    throttle = result.runs.get("udev-throttle")
    if throttle is not None and throttle.reload_walls and result.scenario.name.startswith("resize-"):
        lo, hi = KDUMPCTL_RELOAD_RANGE
        mean = throttle.mean_reload_s
        spread = f"{min(throttle.reload_walls):.2f}-{max(throttle.reload_walls):.2f} s"
        checks.append(
            Check(
                f"kdumpctl reload {lo:g}-{hi:g} s",
                lo * (1 - TOLERANCE) <= mean <= hi * (1 + TOLERANCE),
                f"model mean {mean:.2f} s under load (range {spread}; {throttle.metrics.reloads} reloads; "
                f"idle: {result.params.kdumpctl_reload_s:g} s of CPU) [udev-throttle]",
                "prediction (idle cost is an input)",
            )
        )
    return checks


def target_checks(result: BenchResult, policy: Policy | None = None) -> list[Check]:
    """Issue 7's targets: kdump-coalesce against the distro strategies of this run."""
    policy = policy if policy is not None else Policy()
    kc = result.runs.get(KC)
    if kc is None:
        return []
    checks: list[Check] = []
    m = kc.metrics
    bound = ceil_bound(kc.burst_s, policy.max_delay)
    needs_reload = any(r.metrics.reloads for n, r in result.runs.items() if n in DISTRO) and m.reloads > 0
    if needs_reload or result.fast_reloads:
        checks.append(
            Check(
                "reloads when every event arrives within quiet",
                result.fast_reloads == 1,
                f"{result.fast_reloads} (want 1)",
            )
        )
    checks.append(
        Check(
            "reloads <= ceil(burst / max_delay) + 1",
            m.reloads <= bound,
            f"{m.reloads} <= ceil({kc.burst_s:.1f} / {policy.max_delay:g}) + 1 = {bound}",
        )
    )
    for name, factor in (("udev-throttle", 100), ("udev-serial", 1000)):
        other = result.runs.get(name)
        if other is None:
            continue
        ratio = other.metrics.exposure_s / m.exposure_s if m.exposure_s > 0 else float("inf")
        checks.append(
            Check(
                f"exposure_s >= {factor}x lower than {name}",
                other.metrics.exposure_s == 0 and m.exposure_s == 0 or ratio >= factor,
                f"{_fmt(m.exposure_s)} s vs {_fmt(other.metrics.exposure_s)} s: {_ratio(ratio)}",
            )
        )
    if m.settle_s is not None:
        reload_s = kc.mean_reload_s
        limit = policy.quiet + reload_s
        checks.append(
            Check(
                "settle_s <= quiet + one reload",
                m.settle_s <= limit + 1e-6 or m.reloads == 0,
                f"{m.settle_s:.3f} s <= {policy.quiet:g} + {reload_s:.3f} s" if m.reloads else f"{m.settle_s:.3f} s, no reload needed",
            )
        )
    else:
        checks.append(Check("settle_s <= quiet + one reload", False, "never settled"))
    serial = result.runs.get("udev-serial")
    if serial is not None and serial.metrics.cpu_s > 0:
        share = m.cpu_s / serial.metrics.cpu_s
        checks.append(
            Check("cpu_s < 1% of udev-serial's", share < 0.01, f"{_fmt(m.cpu_s)} s vs {_fmt(serial.metrics.cpu_s)} s: {share:.3%}")
        )
    best = _best_distro(result)
    if best:
        checks.append(Check("against the best distro strategy of this run", True, best, "information"))
    return checks


def _ratio(r: float) -> str:
    return "inf x" if r == float("inf") else f"{r:,.0f}x"


def _best_distro(result: BenchResult) -> str:
    kc = result.runs[KC].metrics
    parts = []
    for metric in ("exposure_s", "stale_s", "cpu_s"):
        values = {n: getattr(r.metrics, metric) for n, r in result.runs.items() if n in DISTRO}
        if not values:
            return ""
        best_name = min(values, key=lambda n: values[n])
        mine = getattr(kc, metric)
        theirs = values[best_name]
        head = f"{metric} {_fmt(mine)} vs {best_name} {_fmt(theirs)}"
        if mine <= theirs:
            parts.append(f"{head} ({_ratio(theirs / mine if mine > 0 else float('inf'))} lower)")
        elif theirs > 0:
            parts.append(f"{head} ({mine / theirs:.1f}x HIGHER)")
        else:
            parts.append(f"{head} (HIGHER)")
    settles = {n: r.metrics.settle_s for n, r in result.runs.items() if n in DISTRO and r.metrics.settle_s is not None}
    if settles:
        best_name = min(settles, key=lambda n: settles[n] or 0.0)
        parts.append(f"settle_s {_fmt(kc.settle_s)} vs {best_name} {_fmt(settles[best_name])}")
    return "; ".join(parts)


def render(result: BenchResult) -> str:
    lines = [
        f"scenario {result.scenario.name}: {result.scenario.description}",
        f"  events: {result.events} ({result.spec}); source: model (virtual clock); parameters: bench/README.md",
        "",
        table(result),
        "",
        "settle_s: last event -> kdump correct again; exposure_s: time with no usable crash kernel;",
        "stale_s: time the loaded header differed from the system; total_s: hotplug start -> kdump correct.",
    ]
    notes = []
    for name, run in result.runs.items():
        extra = ", ".join(f"{k}={v:g}" for k, v in run.extras.items())
        if run.dropped:
            extra += f"{', ' if extra else ''}dropped updates (kexec_trylock failed)={run.dropped}"
        if extra:
            notes.append(f"  {name}: {extra}")
    if notes:
        lines += ["", "details:", *notes]
    pub = published_checks(result)
    if pub:
        lines += ["", f"published figures (Eric DeVolder's RFC, LKML 2020-12-14) vs this model, tolerance +-{TOLERANCE:.0%}:"]
        lines += [f"  [{'ok' if c.ok else 'OFF'}] {c.name}: {c.detail} ({c.role})" for c in pub]
    tgt = target_checks(result)
    if tgt:
        lines += ["", "targets (kdump-coalesce, default policy, vs the distro strategies of this run):"]
        for c in tgt:
            mark = "info" if c.role == "information" else ("ok" if c.ok else "MISSED")
            lines.append(f"  [{mark}] {c.name}: {c.detail}")
    return "\n".join(lines)
