"""Guest side of `kdump-coalesce bench vm-resize`: stand in for udevd, record uevents and kexec syscalls.

Runs in the VM tier's guest, chrooted into the host root (Debian's python3,
stdlib only: no venv start-up cost, no BCC compile):

    python3 bench-guest.py --out DIR --expect N [--handler SCRIPT] [--daemon-pid PID] [--idle S] [--timeout S]

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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import sys
import time

NETLINK_KOBJECT_UEVENT = 15
SO_RCVBUFFORCE = 33
TRACEFS = "/sys/kernel/tracing"
EVENTS = ("sys_enter_kexec_load", "sys_exit_kexec_load")
STATE = "/run/kdc-bench"
MEMORY = re.compile(r"^/devices/system/memory/memory(\d+)$")
KEXEC_LINE = re.compile(r": sys_kexec_load[( ]")


def tracefs_write(rel: str, value: str) -> None:
    with open(os.path.join(TRACEFS, rel), "w") as f:
        f.write(value)


def tracefs_setup() -> None:
    tracefs_write("tracing_on", "0\n")
    tracefs_write("trace_clock", "mono\n")
    for ev in EVENTS:
        tracefs_write(f"events/syscalls/{ev}/enable", "1\n")
    tracefs_write("trace", "")
    tracefs_write("tracing_on", "1\n")


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect", type=int, required=True, help="online/offline uevents to wait for")
    ap.add_argument("--handler", help="script started (sh) for every memory online/offline uevent")
    ap.add_argument("--daemon-pid", type=int)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    os.makedirs(STATE, exist_ok=True)
    useq_path = os.path.join(STATE, "useq")
    with open(useq_path, "w") as f:
        f.write("0\n")
    tracefs_setup()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    sock.bind((0, 1))
    daemon_cpu0 = proc_cpu(args.daemon_pid) if args.daemon_pid else None
    t_start = time.monotonic()
    open(os.path.join(args.out, ".ready"), "w").close()

    uevents: list[tuple[float, str, int]] = []
    handlers: dict[int, float] = {}  # pid -> start (monotonic)
    handler_runs: list[tuple[float, float, int]] = []  # (start, end, status)
    handler_cpu = 0.0
    lost = 0
    useq = 0
    expected_seen = 0
    last_activity = time.monotonic()
    last_trace = 0.0
    timed_out = False
    env = dict(os.environ)
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
                    if args.handler:
                        pid = os.posix_spawn("/bin/sh", ["/bin/sh", args.handler], env)
                        handlers[pid] = now
            continue
        # reap handlers (their rusage includes the kexec children they waited for)
        for pid in list(handlers):
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                now = time.monotonic()
                handler_cpu += ru.ru_utime + ru.ru_stime
                handler_runs.append((handlers.pop(pid), now, os.waitstatus_to_exitcode(status)))
                last_activity = now
        now = time.monotonic()
        if now - last_trace >= 0.5:
            last_trace = now
            ts = last_trace_ts(trace_lines())
            if ts is not None and ts > last_activity:
                last_activity = ts
        if expected_seen >= args.expect and not handlers and now - last_activity >= args.idle and crash_loaded():
            break
        if now - t_start > args.timeout:
            timed_out = True
            break

    lines = trace_lines()
    daemon_cpu = None
    if args.daemon_pid and daemon_cpu0 is not None:
        end = proc_cpu(args.daemon_pid)
        daemon_cpu = None if end is None else end - daemon_cpu0
    for ev in EVENTS:
        tracefs_write(f"events/syscalls/{ev}/enable", "0\n")
    result = {
        "uevents": uevents,
        "uevents_lost": lost,
        "trace": lines,
        "handlers": len(handler_runs) + len(handlers),
        "handler_runs": handler_runs,
        "handlers_running": len(handlers),
        "handler_cpu_s": handler_cpu if args.handler else None,
        "daemon_cpu_s": daemon_cpu,
        "crash_loaded": crash_loaded(),
        "timed_out": timed_out,
        "t_start": t_start,
        "t_end": time.monotonic(),
    }
    tmp = os.path.join(args.out, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(args.out, "result.json"))
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
