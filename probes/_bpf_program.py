"""The BPF program, as data: one C text, one ring buffer, one record layout.

What the kernel side does, and why:

- **CPUs: raw tracepoints ``cpuhp_enter``/``cpuhp_exit``** (kernel/cpu.c).
  Raw tracepoints need no tracefs and no format file, and their arguments are
  the TP_PROTO's (``cpuhp_exit(unsigned int cpu, int state, int idx, int
  ret)``, unchanged since they came with the hotplug state machine, Linux
  4.6, "cpu/hotplug: Add tracepoints"; commit id not verified).  One CPU
  going online runs ~35 callbacks; the filter below keeps the one exit that
  says it is done, in the kernel:

  * online: ``state == CPUHP_ONLINE`` with ``idx < state``: the exit of the
    step that kicked the AP to its target (``bringup_cpu`` /
    ``cpuhp_kick_ap_work`` trace ``st->state`` after the AP got there).
  * offline: ``idx == CPUHP_TEARDOWN_CPU`` with ``state < idx``:
    ``takedown_cpu()`` returned, the CPU is dead and out of cpu_online_mask.
    There is no exit with ``state == CPUHP_OFFLINE`` to wait for:
    ``cpuhp_next_state()`` skips steps without a teardown callback without
    tracing them, so the last traced exit reports whatever state sits below
    the lowest teardown callback (2 on the 6.18 host).  What follows
    TEARDOWN_CPU are the control CPU's "dead" callbacks, which cannot fail.
  * a failure (``ret != 0``) is sent as it happens, with its code; its
    direction is ``state >= idx`` (up steps run with ``st->state == idx``,
    down steps with ``st->state == idx - 1``), except the exit of the kick
    of a failed offline, which rolled back to where it started
    (``state == idx == CPUHP_ONLINE``: no up step runs at CPUHP_ONLINE).

  CPUHP_ONLINE and CPUHP_TEARDOWN_CPU depend on the kernel's config (236 and
  144 on the 6.18 host): they are resolved at run time (BTF ``enum
  cpuhp_state`` or /sys/devices/system/cpu/hotplug/states) and compiled in.

- **Memory: ``online_pages``/``offline_pages`` entry and return**
  (mm/memory_hotplug.c), by fentry/fexit when the kernel accepts them, else
  by kprobe/kretprobe, else not at all (the uevent source covers memory
  then).  Entry is ``going-online``/``going-offline``, return is
  ``online``/``offline`` with the return code (non-zero: it failed, nothing
  changed).  fexit sees the return value after the function's parameters, so
  the parameter count comes from BTF (offline_pages took 2 through Linux
  5.14; 3 in 5.15, whose memory groups added ``group``: 836809ec75cc
  "mm/memory_hotplug: track present pages in memory groups"; 4 by 5.19,
  with ``zone``, likely from 395f6081bad4 "drivers/base/memory: determine
  and store zone for single-zone memory blocks", commit not verified as
  the one).  kretprobes do not see the arguments: the
  entry probe keeps them per thread.

- **Memory add/remove: ``add_memory_resource``/``try_remove_memory``
  return** (mm/memory_hotplug.c), by fexit, else kretprobe, else not at all.
  These are where the /proc/iomem ``System RAM`` resource the header follows
  appears and disappears; online/offline change nothing there.
  ``add_memory_resource(nid, res, mhp_flags)`` is what every add path calls
  (``__add_memory`` for ACPI, ``add_memory`` for hv_balloon,
  ``add_memory_driver_managed`` for virtio-mem and dax/kmem, and the Xen
  balloon directly); the record carries ``res->start`` and the length.
  ``try_remove_memory(start, size)`` is what every remove path calls
  (``__remove_memory`` for the ACPI eject, ``remove_memory`` for dax/kmem,
  ``offline_and_remove_memory`` for virtio-mem) and it releases the resource
  (``release_mem_region_adjustable``) once its "every block offline" check
  passed: a return of 0 is a removal, non-zero (-EBUSY) a refusal that changed
  nothing.  Both are recorded at return only: the return code decides.
  (``try_remove_memory`` came with eca499ab3749 "mm/hotplug: make
  remove_memory() interface usable", Linux 5.3; 6b8f0798b85a
  "mm/memory_hotplug: split memmap_on_memory requests across memblocks",
  6.7, kept its name and signature; the virtio-mem entry points came with
  7b7b27214bba "mm/memory_hotplug: introduce add_memory_driver_managed()"
  and 08b3acd7a68f "mm/memory_hotplug: Introduce
  offline_and_remove_memory()", 5.8.)
  ``try_remove_memory`` is static; Debian's 6.1 and 6.12 builds keep it out of
  line (it is in their vmlinux BTF, which pahole fills from ftrace's
  mcount_loc, so fentry and kprobes can attach).  kretprobes do not see the
  arguments: the entry probe keeps them per thread, in a map of their own,
  because ``add_memory_resource`` calls ``online_pages`` (auto-online) on the
  same thread before it returns.

- **kexec calls: ``syscalls:sys_{enter,exit}_kexec_{load,file_load}``**
  (tracefs syscall events, CONFIG_FTRACE_SYSCALLS), one record per completed
  call with its enter time, so the updater knows the exact window during
  which no crash kernel was loaded.  Kernels without CONFIG_KEXEC have no
  such events (the 6.18 host): they are left out and the log stays inactive.

- Every record goes through one BPF ring buffer (``BPF_RINGBUF_OUTPUT``,
  Linux 5.8, 457f44363a88 "bpf: Implement BPF ring buffer and verifier
  support for it"): unlike perf buffers it has no per-CPU readers that miss a CPU
  onlined later, and it keeps the order of reservation.  A failed
  reservation (buffer full) increments the per-CPU ``drops`` counter that
  user space turns into an :class:`~probes.EventsLost`.  Timestamps are
  ``bpf_ktime_get_ns()``: CLOCK_MONOTONIC.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field


class RecordType(enum.IntEnum):
    CPU_ONLINE = 1
    CPU_OFFLINE = 2
    MEM_GOING_ONLINE = 3
    MEM_ONLINE = 4
    MEM_GOING_OFFLINE = 5
    MEM_OFFLINE = 6
    KEXEC_CALL = 7
    MEM_ADD = 8  # arg0/arg1: start address and length in bytes, not pages
    MEM_REMOVE = 9


class KexecSyscall(enum.IntEnum):
    KEXEC_LOAD = 0
    KEXEC_FILE_LOAD = 1


# struct kc_record, declared once: the C struct and the Python decoder are
# both generated from this table, so they cannot disagree.
RECORD_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    # name, C type, struct code, meaning
    ("ts_ns", "u64", "Q", "bpf_ktime_get_ns() (CLOCK_MONOTONIC)"),
    ("type", "u32", "I", "enum kc_record_type"),
    ("ret", "s32", "i", "return code: cpuhp callback, memory function, kexec syscall"),
    ("arg0", "u64", "Q", "cpu | start pfn | start address (add/remove) | kexec flags"),
    ("arg1", "u64", "Q", "- | nr_pages | length in bytes (add/remove) | kexec enter time (ns)"),
    ("pid", "u32", "I", "tgid of the caller (kexec)"),
    ("syscall", "u32", "I", "enum kc_kexec_syscall (kexec)"),
    ("comm", "char[16]", "16s", "caller's comm (kexec)"),
)
RECORD = struct.Struct("<" + "".join(code for _, _, code, _ in RECORD_FIELDS))

MEMORY_FUNCS = ("online_pages", "offline_pages")  # memory online/offline
# memory add/remove: where the System RAM resource appears and disappears
PRESENCE_FUNCS = ("add_memory_resource", "try_remove_memory")
# fexit finds the return value after the parameters; these are the fewest
# parameters each function has had (add_memory_resource: nid, res, flags).
MIN_PARAMS = {"online_pages": 2, "offline_pages": 2, "add_memory_resource": 2, "try_remove_memory": 2}
KEXEC_SYSCALLS: tuple[tuple[KexecSyscall, str], ...] = (
    (KexecSyscall.KEXEC_LOAD, "kexec_load"),
    (KexecSyscall.KEXEC_FILE_LOAD, "kexec_file_load"),
)


class MemoryProbe(enum.StrEnum):
    FENTRY = "fentry"
    KPROBE = "kprobe"
    NONE = "none"


@dataclass(frozen=True)
class ProgramSpec:
    """Everything the C text depends on, decided at run time by detection."""

    cpuhp_online: int | None = None  # None: no CPU probes
    cpuhp_teardown: int | None = None
    memory: MemoryProbe = MemoryProbe.NONE  # online/offline (MEMORY_FUNCS)
    presence: MemoryProbe = MemoryProbe.NONE  # add/remove (PRESENCE_FUNCS)
    # fexit needs each function's parameter count (from BTF)
    memory_params: dict[str, int] = field(default_factory=dict)
    # (enum value, tracefs syscall event name without sys_enter_/sys_exit_)
    kexec_syscalls: Sequence[tuple[int, str]] = ()
    ringbuf_pages: int = 256  # 1 MiB: ~18,000 records before a drop

    def __post_init__(self) -> None:
        if self.ringbuf_pages <= 0 or self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise ValueError(f"ringbuf_pages must be a power of two, got {self.ringbuf_pages}")
        if (self.cpuhp_online is None) != (self.cpuhp_teardown is None):
            raise ValueError("cpuhp_online and cpuhp_teardown go together")
        for probe, funcs in ((self.memory, MEMORY_FUNCS), (self.presence, PRESENCE_FUNCS)):
            if probe is MemoryProbe.FENTRY:
                for func in funcs:
                    if self.memory_params.get(func, 0) < MIN_PARAMS[func]:
                        raise ValueError(f"fexit on {func} needs its parameter count (>= {MIN_PARAMS[func]}) from BTF")

    @property
    def empty(self) -> bool:
        return (
            self.cpuhp_online is None
            and self.memory is MemoryProbe.NONE
            and self.presence is MemoryProbe.NONE
            and not self.kexec_syscalls
        )


def _record_struct() -> str:
    lines = []
    for name, ctype, _code, meaning in RECORD_FIELDS:
        decl = f"char {name}[16]" if ctype == "char[16]" else f"{ctype} {name}"
        lines.append(f"    {decl + ';':<16} /* {meaning} */")
    return "struct kc_record {\n" + "\n".join(lines) + "\n};\n"


_PRELUDE = """\
/* Generated by kdump-coalesce (probes/_bpf_program.py); printed by --dump-bpf. */
#include <uapi/linux/ptrace.h>

{types}
{record}
BPF_RINGBUF_OUTPUT(events, {pages});
BPF_PERCPU_ARRAY(drops, u64, 1);

static __always_inline struct kc_record *kc_reserve(u32 type)
{{
    struct kc_record *r = events.ringbuf_reserve(sizeof(struct kc_record));
    if (!r) {{
        u32 zero = 0;
        u64 *count = drops.lookup(&zero);
        if (count)
            (*count)++;
        return 0;
    }}
    __builtin_memset(r, 0, sizeof(*r));
    r->ts_ns = bpf_ktime_get_ns();
    r->type = type;
    return r;
}}
"""

_CPUHP = """
/* cpuhp_exit(unsigned int cpu, int state, int idx, int ret): see probes/_bpf_program.py */
#define KC_CPUHP_ONLINE {online}
#define KC_CPUHP_TEARDOWN_CPU {teardown}

RAW_TRACEPOINT_PROBE(cpuhp_exit)
{{
    u32 cpu = (u32)ctx->args[0];
    int state = (int)ctx->args[1];
    int idx = (int)ctx->args[2];
    int ret = (int)ctx->args[3];
    u32 type;

    if (ret == 0) {{
        if (state == KC_CPUHP_ONLINE && idx < state)
            type = KC_CPU_ONLINE;
        else if (idx == KC_CPUHP_TEARDOWN_CPU && state < idx)
            type = KC_CPU_OFFLINE;
        else
            return 0;
    }} else if (state == idx && idx == KC_CPUHP_ONLINE) {{
        type = KC_CPU_OFFLINE;  /* the kick of a failed offline, rolled back */
    }} else {{
        type = state >= idx ? KC_CPU_ONLINE : KC_CPU_OFFLINE;
    }}
    struct kc_record *r = kc_reserve(type);
    if (!r)
        return 0;
    r->arg0 = cpu;
    r->ret = ret;
    events.ringbuf_submit(r, 0);
    return 0;
}}
"""

_MEMORY_COMMON = """
static __always_inline void kc_memory(u32 type, u64 pfn, u64 nr_pages, int ret)
{
    struct kc_record *r = kc_reserve(type);
    if (!r)
        return;
    r->arg0 = pfn;
    r->arg1 = nr_pages;
    r->ret = ret;
    events.ringbuf_submit(r, 0);
}
"""

_FENTRY = """
KFUNC_PROBE({func}, unsigned long pfn, unsigned long nr_pages)
{{
    kc_memory({going}, pfn, nr_pages, 0);
    return 0;
}}

KRETFUNC_PROBE({func}, {params}, int ret)
{{
    kc_memory({done}, pfn, nr_pages, ret);
    return 0;
}}
"""

_KPROBE_ARGS = """
struct kc_memory_args {
    u64 pfn;
    u64 nr_pages;
};
BPF_HASH(memory_args, u64, struct kc_memory_args, 1024);
"""

_KPROBE = """
int kprobe__{func}(struct pt_regs *ctx, unsigned long pfn, unsigned long nr_pages)
{{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_memory_args args = {{ .pfn = pfn, .nr_pages = nr_pages }};
    memory_args.update(&id, &args);
    kc_memory({going}, pfn, nr_pages, 0);
    return 0;
}}

int kretprobe__{func}(struct pt_regs *ctx)
{{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_memory_args *args = memory_args.lookup(&id);
    if (!args)
        return 0;  /* attached while the call was in flight */
    kc_memory({done}, args->pfn, args->nr_pages, (int)PT_REGS_RC(ctx));
    memory_args.delete(&id);
    return 0;
}}
"""

# Memory add/remove.  struct resource is read with explicit probe reads at
# constant offsets (no BCC rewriting of res->start): start and end
# (inclusive) have been its first two members since the resource tree began.
_PRESENCE_COMMON = """
#include <linux/ioport.h>

static __always_inline void kc_resource(struct resource *res, u64 *start, u64 *size)
{
    u64 end = 0;
    bpf_probe_read_kernel(start, sizeof(*start), (char *)res + __builtin_offsetof(struct resource, start));
    bpf_probe_read_kernel(&end, sizeof(end), (char *)res + __builtin_offsetof(struct resource, end));
    *size = end >= *start ? end - *start + 1 : 0;
}
"""

_PRESENCE_FENTRY = """
KRETFUNC_PROBE(add_memory_resource, {add_params}, int ret)
{{
    u64 start = 0, size = 0;
    kc_resource(res, &start, &size);
    kc_memory(KC_MEM_ADD, start, size, ret);
    return 0;
}}

KRETFUNC_PROBE(try_remove_memory, {remove_params}, int ret)
{{
    kc_memory(KC_MEM_REMOVE, start, size, ret);
    return 0;
}}
"""

# A map of its own: add_memory_resource() onlines the new blocks itself
# (auto-online) on the same thread, so online_pages' entry probe runs between
# this entry and its return and must not overwrite what is kept here.
_PRESENCE_KPROBE = """
struct kc_presence_args {
    u64 start;
    u64 size;
};
BPF_HASH(presence_args, u64, struct kc_presence_args, 1024);

static __always_inline void kc_presence_return(u32 type, int ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_presence_args *args = presence_args.lookup(&id);
    if (!args)
        return;  /* attached while the call was in flight */
    kc_memory(type, args->start, args->size, ret);
    presence_args.delete(&id);
}

int kprobe__add_memory_resource(struct pt_regs *ctx, int nid, struct resource *res)
{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_presence_args args = {};
    kc_resource(res, &args.start, &args.size);
    presence_args.update(&id, &args);
    return 0;
}

int kretprobe__add_memory_resource(struct pt_regs *ctx)
{
    kc_presence_return(KC_MEM_ADD, (int)PT_REGS_RC(ctx));
    return 0;
}

int kprobe__try_remove_memory(struct pt_regs *ctx, u64 start, u64 size)
{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_presence_args args = { .start = start, .size = size };
    presence_args.update(&id, &args);
    return 0;
}

int kretprobe__try_remove_memory(struct pt_regs *ctx)
{
    kc_presence_return(KC_MEM_REMOVE, (int)PT_REGS_RC(ctx));
    return 0;
}
"""

_KEXEC_COMMON = """
struct kc_kexec_enter {
    u64 ts_ns;
    u64 flags;
};
BPF_HASH(kexec_enter, u64, struct kc_kexec_enter, 64);

static __always_inline void kc_kexec_exit(u32 syscall, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_kexec_enter *e = kexec_enter.lookup(&id);
    if (!e)
        return;
    struct kc_record *r = kc_reserve(KC_KEXEC_CALL);
    if (r) {
        r->arg0 = e->flags;
        r->arg1 = e->ts_ns;
        r->ret = (s32)ret;
        r->pid = id >> 32;
        r->syscall = syscall;
        bpf_get_current_comm(&r->comm, sizeof(r->comm));
        events.ringbuf_submit(r, 0);
    }
    kexec_enter.delete(&id);
}
"""

_KEXEC = """
TRACEPOINT_PROBE(syscalls, sys_enter_{name})
{{
    u64 id = bpf_get_current_pid_tgid();
    struct kc_kexec_enter e = {{ .ts_ns = bpf_ktime_get_ns(), .flags = args->flags }};
    kexec_enter.update(&id, &e);
    return 0;
}}

TRACEPOINT_PROBE(syscalls, sys_exit_{name})
{{
    kc_kexec_exit({value}, args->ret);
    return 0;
}}
"""


def _fexit_params(spec: ProgramSpec, func: str, named: Sequence[str]) -> str:
    """The parameter list of ``func`` as fexit sees it: the ones the probe
    reads by name, then one placeholder per further parameter (BTF's count),
    so that the return value lands where the kernel puts it."""
    count = spec.memory_params[func]
    return ", ".join([*named, *(f"void *arg{i}" for i in range(len(named), count))])


def render(spec: ProgramSpec) -> str:
    """The C text for ``spec`` (what BCC compiles and ``--dump-bpf`` prints)."""
    types = "\n".join(f"#define KC_{t.name} {t.value}" for t in RecordType)
    text = _PRELUDE.format(types=types, record=_record_struct(), pages=spec.ringbuf_pages)
    if spec.cpuhp_online is not None:
        text += _CPUHP.format(online=spec.cpuhp_online, teardown=spec.cpuhp_teardown)
    if spec.memory is not MemoryProbe.NONE or spec.presence is not MemoryProbe.NONE:
        text += _MEMORY_COMMON
    if spec.memory is not MemoryProbe.NONE:
        if spec.memory is MemoryProbe.KPROBE:
            text += _KPROBE_ARGS
        for func, going, done in (
            ("online_pages", "KC_MEM_GOING_ONLINE", "KC_MEM_ONLINE"),
            ("offline_pages", "KC_MEM_GOING_OFFLINE", "KC_MEM_OFFLINE"),
        ):
            if spec.memory is MemoryProbe.FENTRY:
                params = _fexit_params(spec, func, ["unsigned long pfn", "unsigned long nr_pages"])
                text += _FENTRY.format(func=func, going=going, done=done, params=params)
            else:
                text += _KPROBE.format(func=func, going=going, done=done)
    if spec.presence is not MemoryProbe.NONE:
        text += _PRESENCE_COMMON
        if spec.presence is MemoryProbe.FENTRY:
            text += _PRESENCE_FENTRY.format(
                add_params=_fexit_params(spec, "add_memory_resource", ["int nid", "struct resource *res"]),
                remove_params=_fexit_params(spec, "try_remove_memory", ["u64 start", "u64 size"]),
            )
        else:
            text += _PRESENCE_KPROBE
    if spec.kexec_syscalls:
        text += _KEXEC_COMMON
        for value, name in spec.kexec_syscalls:
            text += _KEXEC.format(name=name, value=value)
    return text
