"""Log every kexec_load / kexec_file_load in the guest, by anyone, as JSON lines.

Runs in the guest with Debian's python3 and BCC (python3-bpfcc), not with the
project's code, so that it is an independent witness of what kdump-tools and
kdump-coalesce load (tests/vm/test_deb_takeover.py):

    python3 kexec-log.py OUTFILE

Writes OUTFILE.ready once the probes are attached, then one line per exec of
kexec-tools ({"ev": "exec", "pid", "ppid", "pcomm", "filename", "argv"}: the attempt,
seen even when a seccomp filter stops the syscall before its tracepoint) and
one per syscall enter and exit: {"ts": ns, "ev": "enter"|"exit", "call": "kexec_load"|
"kexec_file_load", "pid", "comm", "ppid", "pcomm", "flags", "nr_segments",
"ret", "elfcorehdr": hex}.  For a kexec_load with segments, the segment whose
buffer is an ELF core file (the elfcorehdr kexec-tools or the fast path
built) is copied from the caller's memory as the syscall starts: its
PT_LOADs are exactly what the capture kernel will be told to dump.  Stops at
SIGTERM or when OUTFILE.stop appears.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from bcc import BPF  # type: ignore[import-not-found]

PROGRAM = r"""
/* No kernel headers beyond BCC's own: with <linux/sched.h> and
 * <linux/mm_types.h> (for task->real_parent and mm->arg_start) this script
 * took 34 s to be ready in a plain 6.1 guest and 52-113 s in the deb test's
 * systemd guests under TCG, once per boot; 17-31 s without.  The parent comes from the
 * sched_process_fork tracepoint instead (the forking task is current
 * there), so a process forked before the witness started has none. */
#define HDR_MAX 4096
#define NAME_MAX_ 256
struct seg { const void *buf; unsigned long bufsz; unsigned long mem; unsigned long memsz; };
struct parent { u32 ppid; char pcomm[16]; };
struct event {
    u64 ts; u32 pid; u32 ppid; char comm[16]; char pcomm[16];
    u64 flags; u64 nr; s64 ret; u32 ev; u32 call; u32 hdr_len; u32 pad;
    u8 hdr[HDR_MAX];
};
BPF_PERCPU_ARRAY(scratch, struct event, 1);
BPF_HASH(parents, u32, struct parent, 65536);
BPF_PERF_OUTPUT(events);

static __always_inline struct event *start(u32 ev, u32 call) {
    int zero = 0;
    struct event *e = scratch.lookup(&zero);
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns();
    e->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    struct parent *p = parents.lookup(&e->pid);
    e->ppid = 0;
    __builtin_memset(e->pcomm, 0, sizeof(e->pcomm));
    if (p) {
        e->ppid = p->ppid;
        __builtin_memcpy(e->pcomm, p->pcomm, sizeof(e->pcomm));
    }
    e->ev = ev; e->call = call; e->hdr_len = 0; e->ret = 0; e->flags = 0; e->nr = 0;
    return e;
}

/* args->child_pid is the new task's id: a process's pid (its tgid), which
 * is what start() looks up; a new thread's entry is never looked up. */
TRACEPOINT_PROBE(sched, sched_process_fork) {
    struct parent p = {};
    u32 child = args->child_pid;
    p.ppid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&p.pcomm, sizeof(p.pcomm));
    parents.update(&child, &p);
    return 0;
}
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    if (tid == id >> 32) parents.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_kexec_load) {
    struct event *e = start(0, 0);
    if (!e) return 0;
    e->flags = args->flags;
    e->nr = args->nr_segments;
    struct seg s = {};
    u8 head[18] = {};
    #pragma unroll
    for (int i = 0; i < 16; i++) {
        if (i >= e->nr) break;
        if (bpf_probe_read_user(&s, sizeof(s), (const char *)args->segments + i * sizeof(s))) break;
        if (s.bufsz < 64 || bpf_probe_read_user(head, sizeof(head), s.buf)) continue;
        if (head[0] != 0x7f || head[1] != 'E' || head[2] != 'L' || head[3] != 'F' || head[16] != 4 || head[17] != 0) continue;
        /* bounded by a mask, which the verifier follows (a compare that
         * clang may move after the copy it cannot): at most HDR_MAX - 1 */
        u64 n = s.bufsz >= HDR_MAX ? HDR_MAX - 1 : s.bufsz;
        asm volatile("" : "+r"(n));  /* else clang drops the mask and passes an unbounded copy */
        n &= HDR_MAX - 1;
        if (bpf_probe_read_user(e->hdr, n, s.buf) == 0) e->hdr_len = n;
        break;
    }
    events.perf_submit(args, e, sizeof(*e));
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_kexec_load) {
    struct event *e = start(1, 0);
    if (!e) return 0;
    e->ret = args->ret;
    events.perf_submit(args, e, sizeof(*e) - HDR_MAX);
    return 0;
}
/* Every exec of kexec-tools, with its parent and the file run: a reload
 * attempt is visible even when the syscall never reaches the kernel (a
 * seccomp filter returns its errno before the sys_enter tracepoint). */
TRACEPOINT_PROBE(sched, sched_process_exec) {
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    if (comm[0] != 'k' || comm[1] != 'e' || comm[2] != 'x' || comm[3] != 'e' || comm[4] != 'c' || comm[5] != 0) return 0;
    struct event *e = start(2, 2);
    if (!e) return 0;
    TP_DATA_LOC_READ_STR(e->hdr, filename, NAME_MAX_);
    e->hdr_len = NAME_MAX_;
    events.perf_submit(args, e, sizeof(*e) - HDR_MAX + NAME_MAX_);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_kexec_file_load) {
    struct event *e = start(0, 1);
    if (!e) return 0;
    e->flags = args->flags;
    events.perf_submit(args, e, sizeof(*e) - HDR_MAX);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_kexec_file_load) {
    struct event *e = start(1, 1);
    if (!e) return 0;
    e->ret = args->ret;
    events.perf_submit(args, e, sizeof(*e) - HDR_MAX);
    return 0;
}
"""

HDR_MAX = 4096


class Event(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("ppid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16), ("pcomm", ctypes.c_char * 16),
        ("flags", ctypes.c_uint64), ("nr", ctypes.c_uint64), ("ret", ctypes.c_int64),
        ("ev", ctypes.c_uint32), ("call", ctypes.c_uint32), ("hdr_len", ctypes.c_uint32), ("pad", ctypes.c_uint32),
        ("hdr", ctypes.c_uint8 * HDR_MAX),
    ]


def main() -> int:
    out_path = sys.argv[1]
    bpf = BPF(text=PROGRAM)
    out = open(out_path, "a", buffering=1)
    stopping = False

    def on_event(_cpu: int, data: int, size: int) -> None:
        e = ctypes.cast(data, ctypes.POINTER(Event)).contents
        if e.ev == 2:
            filename = bytes(e.hdr[: e.hdr_len]).split(b"\0", 1)[0]
            # argv, best effort: kexec-tools under TCG runs for a second or
            # more, so its /proc entry is usually still there (diagnostics
            # only; the test counts execs by parent, never by argument).
            try:
                with open(f"/proc/{e.pid}/cmdline", "rb") as f:
                    cmdline = f.read().rstrip(b"\0")
            except OSError:
                cmdline = b""
            argv = cmdline.split(b"\0") if cmdline else [filename]
            out.write(json.dumps({
                "ts": e.ts, "ev": "exec", "call": "exec", "pid": e.pid, "comm": e.comm.decode(errors="replace"),
                "ppid": e.ppid, "pcomm": e.pcomm.decode(errors="replace"), "filename": filename.decode(errors="replace"),
                "argv": [a.decode(errors="replace") for a in argv],
            }) + "\n")
            return
        rec = {
            "ts": e.ts, "ev": "exit" if e.ev else "enter", "call": "kexec_file_load" if e.call else "kexec_load",
            "pid": e.pid, "comm": e.comm.decode(errors="replace"), "ppid": e.ppid,
            "pcomm": e.pcomm.decode(errors="replace"),
        }
        if e.ev:
            rec["ret"] = e.ret
        else:
            rec["flags"] = e.flags
            rec["nr_segments"] = e.nr
            if e.hdr_len and size >= ctypes.sizeof(Event):
                rec["elfcorehdr"] = bytes(e.hdr[: e.hdr_len]).hex()
        out.write(json.dumps(rec) + "\n")

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    bpf["events"].open_perf_buffer(on_event, page_cnt=256)
    with open(out_path + ".ready", "w") as f:
        f.write(f"{os.getpid()}\n")
    while not stopping and not os.path.exists(out_path + ".stop"):
        bpf.perf_buffer_poll(timeout=200)
    bpf.perf_buffer_poll(timeout=0)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
