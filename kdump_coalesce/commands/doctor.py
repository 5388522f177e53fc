"""``kdump-coalesce doctor``: what this host can do, and what to fix."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ground.config import section_from
from ground.errors import EXIT_OK, EXIT_UNAVAILABLE, KdumpCoalesceError
from ground.events import Kind
from probes import ProgramSpec, all_checks, events_covered, render, run_can_work

from ._common import add_config_flag, read_config

if TYPE_CHECKING:
    from updater import KexecSettings, UpdaterSettings

NAME = "doctor"
ORDER = 20

EPILOG = """\
One line per capability: status, name, what was found, and (-> ...) what to
do when it is missing.  Checks are real: a BPF program is loaded and attached
for each probe kind, the netlink socket is bound, files are read.

The 'crash_hotplug' line says which path the host is on (kernel support for
crash hotplug: /sys/kernel/crash_elfcorehdr_size; how the loaded image was
loaded: crash_hotplug 1 = with the kernel's hotplug support, 0 = plain
kexec -p or nothing), and the 'plan:' line what 'run' does here with this
host's config file (--config, default /etc/kdump-coalesce/config.toml):
its backend, and on a kernel with crash hotplug whether it stands aside
(the kernel rewrites the header; the daemon watches and repairs removals
and skipped updates), hands over (one kexec_load with
KEXEC_UPDATE_ELFCOREHDR, then stands aside), or manages the header itself
([updater] kernel-hotplug = "off", or a --backend other than auto/kernel),
and why.

The 'events:' lines say which source follows each change the header depends
on (cpu online/offline, cpu add/remove, memory online/offline, memory
add/remove) under --source auto; "bpf+uevent" means both, counted once.

exit status: 0 when 'run' can work here (root, an event source for every
change, block_size_bytes, a kexec-capable kernel and kexec binary);
3 otherwise, with the reasons on the last line.

examples:
  sudo kdump-coalesce doctor
  sudo kdump-coalesce doctor --json | jq '.checks[] | select(.status != "ok")'
  sudo kdump-coalesce doctor --dump-bpf      the C program 'run' would load here
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="check what this host can do (BPF, uevents, kdump, distro rules) and what to fix",
        description="Check every capability kdump-coalesce uses on this host and say what to do about missing ones.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    p.add_argument("--dump-bpf", action="store_true", help="print the BPF C program planned for this host and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dump_bpf:
        return dump_bpf(frozenset(Kind))
    import updater

    # Read first: a bad config file is the one-line error every command gives, before any probing.
    document, path = read_config(args, updater.SECTIONS)
    settings = section_from(updater.UpdaterSettings, "updater", document, path, None)
    kexec = section_from(updater.KexecSettings, "kexec", document, path, None)
    checks = all_checks()
    ok, problems = run_can_work(checks)
    covered = events_covered(checks)
    plan = auto_plan(settings, kexec, config=path)
    if args.json:
        doc = {
            "run_can_work": ok,
            "problems": problems,
            "auto": plan,
            "events": covered,
            "checks": [c.to_json() for c in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        for c in checks:
            print(c.line())
        # One line per change the header depends on, and who follows it.
        print("events (--source auto; bpf+uevent: both, counted once):")
        for change, how in covered.items():
            print(f"{'ok' if how != 'none' else 'MISSING':<7} {change:<22} {how}")
        print(f"plan:   backend {plan['backend']}, kernel hotplug {plan['kernel_hotplug']} ({plan['config']}): {plan['why']}")
        if ok:
            print("run: can work here")
        else:
            # `run` still starts on such a host (it watches events and, with
            # --backend auto, stages headers in dry-run), but it cannot keep a
            # crash kernel correct, which is what doctor answers for.
            print("run: cannot keep kdump correct here: " + "; ".join(problems))
    return EXIT_OK if ok else EXIT_UNAVAILABLE


def auto_plan(settings: UpdaterSettings | None = None, kexec: KexecSettings | None = None, *, config: str = "") -> dict[str, str]:
    """What ``run`` would choose here with these settings (default: the
    built-in ones): ``backend``, ``kernel_hotplug`` (stand-aside, hand-over,
    off, unavailable, unsupported; docs/updater.md), ``why`` and ``config``
    (the file they came from).  Reads the live state like ``run`` does,
    under ``settings.snapshot_root``; without root it says it cannot tell."""
    import updater

    settings = settings or updater.UpdaterSettings()
    kexec = kexec or updater.KexecSettings()
    source = config or "built-in defaults"
    try:
        snapshot = updater.read_snapshot(settings.snapshot_root)
    except (KdumpCoalesceError, OSError) as exc:
        return {"backend": "?", "kernel_hotplug": "?", "why": f"cannot tell: {exc}", "config": source}
    caps = updater.HostCapabilities.probe(snapshot, kexec, settings)
    requested = settings.backend
    mode, mode_why = updater.plan_kernel_hotplug(requested, caps, settings.kernel_hotplug)
    try:
        backend, why = updater.choose_backend(requested, caps, settings.kernel_hotplug)
    except KdumpCoalesceError as exc:
        return {"backend": "?", "kernel_hotplug": mode, "why": str(exc), "config": source}
    if mode == "stand-aside":
        why = f"stand aside: {why}; the daemon watches, and repairs with one hotplug-capable load a removal the kernel's header still lists or an update the kernel skipped"
    elif mode == "hand-over":
        why = f"hand over: {why}, then stand aside"
    else:
        why = f"{why}; the daemon manages the header (kernel hotplug: {mode_why})"
    if requested != "auto":
        why = f"--backend {requested} (from the config): {why}"
    return {"backend": backend, "kernel_hotplug": mode, "why": why, "config": source}


def dump_bpf(kinds: frozenset[Kind]) -> int:
    """Print the C text ``run``/``trace`` would compile here.  Planning loads
    small probe programs (root); without root it prints the program for the
    kinds asked, with every probe kind the text can hold, and says so."""
    import os

    from probes import plan_program

    if os.geteuid() == 0:
        plan = plan_program(want_cpu=Kind.CPU in kinds, want_memory=Kind.MEMORY in kinds, mount_tracefs=False)
        for note in plan.notes:
            print(f"/* {note} */")
        spec = plan.spec
    else:
        print("/* not root: cannot probe this kernel; showing the program with placeholder CPUHP values */")
        spec = ProgramSpec(cpuhp_online=236, cpuhp_teardown=144) if Kind.CPU in kinds else ProgramSpec()
    sys.stdout.write(render(spec))
    return EXIT_OK
