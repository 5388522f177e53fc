"""Guest side of `kdump-coalesce bench vm-resize`: stand in for udevd, record uevents and kexec syscalls.

Runs in the VM tier's guest, chrooted into the host root (Debian's python3,
stdlib only: no venv start-up cost, no BCC compile):

    python3 bench-guest.py --out DIR --expect N [--handler SCRIPT] [--daemon-pid PID] [--idle S] [--timeout S]
                           [--max-workers N] [--cutoff-reloads N] [--kprobe SYMBOL]

- Enables the kernel's ``syscalls`` tracepoints ``sys_enter_kexec_load`` /
  ``sys_exit_kexec_load`` through tracefs with ``trace_clock=mono`` (so their
  timestamps are CLOCK_MONOTONIC, the clock of the uevent times below) and
  clears the ring buffer: only what happens from here on is measured.
- Listens on NETLINK_KOBJECT_UEVENT (group 1; Debian's 6.1 has no uevent
  helper and the guest runs no udevd) and records every memory-block uevent.
- With ``--handler``: does what udevd does for the distro rules (they all
  match ``SUBSYSTEM=="memory", ACTION=="online"|"offline"``): one handler
  process per such uevent, started at once (udevd runs RUN+= programs of
  different devices in parallel workers; the handlers serialise themselves
  with flock, as the distro scripts do).  ``/run/kdc-bench/useq`` counts the
  uevents seen so far: the throttle handler's stand-in for ``udevadm settle``
  watches it.  Handlers are reaped with wait4: their rusage (and that of the
  kexec processes they waited for) is the strategy's CPU.
- With ``--daemon-pid``: kdump-coalesce runs on its own; its CPU is the delta
  of utime+stime+cutime+cstime in /proc/PID/stat over the run.
- Done when ``--expect`` online/offline uevents were seen, no handler runs,
  the crash kernel is loaded, and neither a uevent, a handler exit nor a
  kexec_load syscall happened for ``--idle`` seconds (or at ``--timeout``).
  Writes DIR/result.json: the uevents, the raw trace lines, the CPU figures;
  the host (bench/vm) computes the metrics from them.
- ``--max-workers N``: at most N handlers at a time, the rest queued in
  uevent order, as udevd's ``children_max`` does (systemd 252:
  ``cpu_count * 2 + 16``, 20 on this 2-vCPU guest).  0 (the default) starts
  every handler at once.
- ``--cutoff-reloads N``: the budget of a strategy that would run for an hour
  (udev-serial: one full reload per block).  Once every expected uevent was
  seen and N crash loads succeeded, no queued handler is started any more, the
  running ones are killed (their process groups), and one completion load
  (``$BENCH_KEXEC -p``) runs so that kdump is correct for the crash that
  follows; the result says so (``cutoff``), and the host extrapolates.
- ``--kprobe SYMBOL``: also record entry/return of SYMBOL (the kernel's own
  header update, ``crash_handle_hotplug_event``) through tracefs kprobes.
- DIR/progress.json, rewritten every second: uevents and online uevents seen,
  handlers run, crash loads so far, elapsed.  DIR/.stop (the host's Ctrl-C)
  ends the run at once with what was recorded (``interrupted``).
- Records the exec of every process whose file name holds "kexec"
  (``sched_process_exec``): the loader starts reading the system state there,
  the bound the host's ``stale_s`` uses.  Peak guest memory in use
  (MemTotal - MemAvailable) is sampled every second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

NETLINK_KOBJECT_UEVENT = 15
SO_RCVBUFFORCE = 33
TRACEFS = "/sys/kernel/tracing"
EVENTS = ("sys_enter_kexec_load", "sys_exit_kexec_load")
STATE = "/run/kdc-bench"
MEMORY = re.compile(r"^/devices/system/memory/memory(\d+)$")
KEXEC_LINE = re.compile(r": (sys_kexec_load[( ]|sched_process_exec:|kdc_chp)")
EXEC_FILTER = 'filename ~ "*kexec*"'
CALL = re.compile(r"-(\d+)\s.*: sys_kexec_load(?:\(.*nr_segments: ([0-9a-f]+).*flags: ([0-9a-f]+)\)| -> (\S+))")


def crash_loads_ok(lines: list[str]) -> int:
    """Crash kexec_load calls with segments that returned 0 (pairs enter/exit per pid)."""
    pending: dict[str, bool] = {}
    n = 0
    for line in lines:
        m = CALL.search(line)
        if not m:
            continue
        pid = m.group(1)
        if m.group(4) is None:
            pending[pid] = int(m.group(2), 16) > 0 and bool(int(m.group(3), 16) & 1)
        elif pending.pop(pid, False) and m.group(4) == "0x0":
            n += 1
    return n


def tracefs_write(rel: str, value: str) -> None:
    with open(os.path.join(TRACEFS, rel), "w") as f:
        f.write(value)


def kprobe_events_append(line: str) -> None:
    """Add a probe to kprobe_events without clearing the others (O_TRUNC does).

    Not open(..., "a"): Python seeks to the end of a file it opens for
    appending, and tracefs' kprobe_events (a seq_file) refuses SEEK_END with
    EINVAL, so every probe failed "Invalid argument" before the kernel saw
    it (the 6.12 guest's `kernel` runs of 2026-12-02).  O_APPEND alone is
    what the shell's >> does."""
    fd = os.open(os.path.join(TRACEFS, "kprobe_events"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def tracefs_setup(kprobe: str | None) -> str | None:
    """Enable the events; return why the kprobe could not be set (or None)."""
    tracefs_write("tracing_on", "0\n")
    tracefs_write("trace_clock", "mono\n")
    tracefs_write("buffer_size_kb", "8192\n")
    for ev in EVENTS:
        tracefs_write(f"events/syscalls/{ev}/enable", "1\n")
    tracefs_write("events/sched/sched_process_exec/filter", EXEC_FILTER + "\n")
    tracefs_write("events/sched/sched_process_exec/enable", "1\n")
    kprobe_error = None
    if kprobe:
        errors = []
        for sym in kprobe.split(","):  # the first symbol the kernel lets us probe
            try:
                kprobe_events_append(f"p:kdc/kdc_chp_enter {sym}\n")
                kprobe_events_append(f"r:kdc/kdc_chp_exit {sym}\n")
                tracefs_write("events/kdc/enable", "1\n")
                kprobe_error = None if sym == kprobe.split(",")[0] else f"kprobe on {sym} ({'; '.join(errors)})"
                break
            except OSError as e:
                errors.append(f"{sym}: {e.strerror}")
                with open(os.path.join(TRACEFS, "kprobe_events"), "w") as f:
                    f.write("")
        else:
            kprobe_error = "no kprobe: " + "; ".join(errors)
    tracefs_write("trace", "")
    tracefs_write("tracing_on", "1\n")
    return kprobe_error


def trace_lines() -> list[str]:
    with open(os.path.join(TRACEFS, "trace")) as f:
        return [line.rstrip("\n") for line in f if KEXEC_LINE.search(line)]


def last_trace_ts(lines: list[str]) -> float | None:
    for line in reversed(lines):
        m = re.search(r"\s(\d+\.\d+):\s", line)
        if m:
            return float(m.group(1))
    return None


def proc_cpu(pid: int) -> float | None:
    """utime+stime+cutime+cstime of a process, seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def crash_loaded() -> bool:
    with open("/sys/kernel/kexec_crash_loaded") as f:
        return f.read().strip() == "1"


def mem_used() -> int:
    """MemTotal - MemAvailable, bytes."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))


def write_json(path: str, doc: object) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect", type=int, required=True, help="online/offline uevents to wait for")
    ap.add_argument("--handler", help="script started (sh) for every memory online/offline uevent")
    ap.add_argument("--daemon-pid", type=int)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--max-workers", type=int, default=0, help="handlers at a time (udevd's children_max); 0: all")
    ap.add_argument("--cutoff-reloads", type=int, default=0, help="stop after this many crash loads (0: never)")
    ap.add_argument("--kprobe", help="kernel function whose entry/return to record (kdc_chp_enter/exit)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    os.makedirs(STATE, exist_ok=True)
    useq_path = os.path.join(STATE, "useq")
    with open(useq_path, "w") as f:
        f.write("0\n")
    kprobe_error = tracefs_setup(args.kprobe)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    sock.bind((0, 1))
    daemon_cpu0 = proc_cpu(args.daemon_pid) if args.daemon_pid else None
    t_start = time.monotonic()
    stop_path = os.path.join(args.out, ".stop")
    progress_path = os.path.join(args.out, "progress.json")
    open(os.path.join(args.out, ".ready"), "w").close()

    uevents: list[tuple[float, str, int]] = []
    handlers: dict[int, float] = {}  # pid -> start (monotonic)
    queued: list[float] = []  # uevent times of handlers not started yet (--max-workers)
    handler_runs: list[tuple[float, float, int]] = []  # (start, end, status)
    handler_cpu = 0.0
    lost = 0
    useq = 0
    expected_seen = 0
    last_activity = time.monotonic()
    last_trace = 0.0
    last_progress = 0.0
    last_poll = 0.0
    loads_ok = 0
    peak_mem = mem_used()
    timed_out = interrupted = False
    cutoff: dict[str, object] | None = None
    env = dict(os.environ)

    def spawn(t_uevent: float) -> None:
        assert args.handler
        # own process group: a cut-off kills the handler and the kexec it runs
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", args.handler], env, setpgroup=0)
        handlers[pid] = time.monotonic()

    def reap(block: bool) -> None:
        nonlocal handler_cpu, last_activity
        for pid in list(handlers):
            wpid, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
            if wpid == pid:
                now = time.monotonic()
                handler_cpu += ru.ru_utime + ru.ru_stime
                handler_runs.append((handlers.pop(pid), now, os.waitstatus_to_exitcode(status)))
                last_activity = now

    while True:
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            try:
                msg = sock.recv(1 << 16)
            except OSError:  # ENOBUFS: the kernel dropped uevents
                lost += 1
                continue
            now = time.monotonic()
            head = msg.split(b"\0", 1)[0].decode("ascii", "replace")
            action, _, devpath = head.partition("@")
            m = MEMORY.match(devpath)
            if m:
                uevents.append((now, action, int(m.group(1))))
                useq += 1
                tmp = useq_path + ".tmp"
                with open(tmp, "w") as f:
                    f.write(f"{useq}\n")
                os.replace(tmp, useq_path)
                last_activity = now
                if action in ("online", "offline"):
                    expected_seen += 1
                    if args.handler and cutoff is None:
                        if args.max_workers and len(handlers) >= args.max_workers:
                            queued.append(now)
                        else:
                            spawn(now)
            if now - last_poll < 0.05:
                continue
        last_poll = time.monotonic()
        # reap handlers (their rusage includes the kexec children they waited for)
        reap(False)
        while queued and cutoff is None and (not args.max_workers or len(handlers) < args.max_workers):
            spawn(queued.pop(0))
        now = time.monotonic()
        if now - last_trace >= 0.5:
            last_trace = now
            lines = trace_lines()
            loads_ok = crash_loads_ok(lines)
            ts = last_trace_ts(lines)
            if ts is not None and ts > last_activity:
                last_activity = ts
        if now - last_progress >= 1.0:
            last_progress = now
            peak_mem = max(peak_mem, mem_used())
            write_json(progress_path, {
                "elapsed_s": now - t_start, "uevents": len(uevents), "online": expected_seen,
                "expect": args.expect, "handlers_started": len(handler_runs) + len(handlers),
                "handlers_running": len(handlers), "queued": len(queued), "reloads": loads_ok,
                "peak_mem_bytes": peak_mem,
            })  # fmt: skip
            if os.path.exists(stop_path):
                interrupted = True
                break
        if (args.cutoff_reloads and cutoff is None and expected_seen >= args.expect
                and loads_ok >= args.cutoff_reloads):  # fmt: skip
            # The budget is spent: stop the strategy, then make kdump correct
            # again with one load, as the rest of the queue would have in the end.
            t_cut = time.monotonic()
            for pid in list(handlers):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = len(handlers)
            reap(True)
            not_run = len(queued)
            queued.clear()
            lines = trace_lines()
            reloads_at_cut = crash_loads_ok(lines)
            rc = subprocess.call([env["BENCH_KEXEC"], "-p", env["BENCH_KERNEL"], f"--initrd={env['BENCH_INITRD']}",
                                  f"--append={env['BENCH_APPEND']}"])  # fmt: skip
            cutoff = {"t": t_cut, "reloads": reloads_at_cut, "handlers_killed": killed,
                      "handlers_not_run": not_run, "completion_load_rc": rc, "t_done": time.monotonic()}  # fmt: skip
            last_activity = time.monotonic()
        if expected_seen >= args.expect and not handlers and not queued and now - last_activity >= args.idle and crash_loaded():
            break
        if now - t_start > args.timeout:
            timed_out = True
            break

    if interrupted:
        for pid in list(handlers):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap(True)
    lines = trace_lines()
    daemon_cpu = None
    if args.daemon_pid and daemon_cpu0 is not None:
        end = proc_cpu(args.daemon_pid)
        daemon_cpu = None if end is None else end - daemon_cpu0
    for ev in EVENTS:
        tracefs_write(f"events/syscalls/{ev}/enable", "0\n")
    tracefs_write("events/sched/sched_process_exec/enable", "0\n")
    peak_mem = max(peak_mem, mem_used())
    result = {
        "uevents": uevents,
        "uevents_lost": lost,
        "trace": lines,
        "handlers": len(handler_runs) + len(handlers),
        "handler_runs": handler_runs,
        "handlers_running": len(handlers),
        "handlers_queued": len(queued),
        "handler_cpu_s": handler_cpu if args.handler else None,
        "daemon_cpu_s": daemon_cpu,
        "crash_loaded": crash_loaded(),
        "timed_out": timed_out,
        "interrupted": interrupted,
        "cutoff": cutoff,
        "cutoff_reloads": args.cutoff_reloads,
        "max_workers": args.max_workers,
        "expect": args.expect,
        "kprobe_error": kprobe_error,
        "peak_mem_bytes": peak_mem,
        "t_start": t_start,
        "t_end": time.monotonic(),
    }
    write_json(os.path.join(args.out, "result.json"), result)
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
