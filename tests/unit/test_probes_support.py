"""Source selection without root, the BTF reader on a synthetic blob, the
cpuhp numbers from a real states file, and doctor's pure checks."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kdump_coalesce.cli import main
from ground.errors import EXIT_BAD_INPUT, NeedsRootError
from probes import open_sources
from probes._btf import Btf, BtfError
from probes._capabilities import Capability, check_kexec_binary, check_udev_rules, events_covered, run_can_work
from probes._sysfs import cpuhp_states, parse_cpu_list

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.mark.parametrize(("spec", "what"), [("auto", "--source auto"), ("bpf", "--source bpf"), ("uevent", "--source uevent")])
def test_live_sources_need_root(not_root: None, spec: str, what: str) -> None:
    with pytest.raises(NeedsRootError) as info:
        open_sources(spec)
    assert str(info.value).startswith(what) and str(info.value).endswith("needs root (run with sudo)")
    assert "\n" not in str(info.value)


def test_trace_without_root_is_a_one_line_error(not_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--plain", "--duration", "1s"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == "kdump-coalesce trace: error: --source auto (loading BPF programs, a burst-sized netlink socket) needs root (run with sudo)"


def test_replay_specs_still_work_without_root(not_root: None) -> None:
    selection = open_sources("scenario:cpu:2:4")
    assert len(selection.sources) == 1 and selection.block_size


# -- BTF ----------------------------------------------------------------------


def synthetic_btf() -> bytes:
    """enum cpuhp_state {CPUHP_OFFLINE=0, CPUHP_TEARDOWN_CPU=144, CPUHP_ONLINE=236};
    int online_pages(unsigned long, unsigned long, void *) as FUNC_PROTO + FUNC."""
    strings = b"\0cpuhp_state\0CPUHP_OFFLINE\0CPUHP_TEARDOWN_CPU\0CPUHP_ONLINE\0online_pages\0pfn\0nr\0x\0int\0"

    def off(name: bytes) -> int:
        return strings.index(b"\0" + name + b"\0") + 1

    types = b""
    # 1: int (KIND_INT, size 4, + u32 encoding)
    types += struct.pack("<III", off(b"int"), 1 << 24, 4) + struct.pack("<I", 32)
    # 2: enum cpuhp_state, 3 values
    types += struct.pack("<III", off(b"cpuhp_state"), (6 << 24) | 3, 4)
    for name, value in ((b"CPUHP_OFFLINE", 0), (b"CPUHP_TEARDOWN_CPU", 144), (b"CPUHP_ONLINE", 236)):
        types += struct.pack("<Ii", off(name), value)
    # 3: func proto returning int (type 1), 3 params
    types += struct.pack("<III", 0, (13 << 24) | 3, 1)
    for name in (b"pfn", b"nr", b"x"):
        types += struct.pack("<II", off(name), 1)
    # 4: func online_pages -> proto 3
    types += struct.pack("<III", off(b"online_pages"), 12 << 24, 3)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_btf_enum_and_function() -> None:
    btf = Btf(synthetic_btf())
    assert btf.enum_values("cpuhp_state") == {"CPUHP_OFFLINE": 0, "CPUHP_TEARDOWN_CPU": 144, "CPUHP_ONLINE": 236}
    assert btf.func_id("online_pages") == 4 and btf.func_param_count("online_pages") == 3
    assert btf.func_id("offline_pages") is None and btf.enum_values("nope") == {}
    states = cpuhp_states("/nonexistent", btf=btf)
    assert states is not None and (states.online, states.teardown) == (236, 144) and states.origin.startswith("BTF")


def btf_blob(strings: bytes, types: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def test_btf_names_match_whole_strings_and_the_first_type_wins() -> None:
    """A name is the string at its offset, up to the NUL: "pages" is no function until a FUNC's
    name points at it (here at the tail of "online_pages", which a string table may share), and
    "online" (not NUL-terminated there) never is; of two FUNCs with one name the first wins."""
    strings = b"\0online_pages\0"
    on, pages = 1, strings.index(b"pages\0")
    types = struct.pack("<III", 0, (13 << 24) | 2, 0) + struct.pack("<IIII", 0, 0, 0, 0)  # 1: proto, 2 params
    types += struct.pack("<III", 0, (13 << 24) | 5, 0) + struct.pack("<II", 0, 0) * 5  # 2: proto, 5 params
    types += struct.pack("<III", on, 12 << 24, 2)  # 3: online_pages -> proto 2
    types += struct.pack("<III", on, 12 << 24, 1)  # 4: online_pages again -> proto 1
    btf = Btf(btf_blob(strings, types))
    assert (btf.func_id("online_pages"), btf.func_param_count("online_pages")) == (3, 5)
    assert btf.func_id("pages") is None and btf.func_id("online") is None
    types += struct.pack("<III", pages, 12 << 24, 1)  # 5: pages -> proto 1
    btf = Btf(btf_blob(strings, types))
    assert (btf.func_id("pages"), btf.func_param_count("pages")) == (5, 2)


@pytest.mark.parametrize(
    ("types", "message"),
    [
        (struct.pack("<III", 1, 31 << 24, 0), "unknown BTF kind 31 at type id 1"),
        (struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32) + struct.pack("<II", 1, 12 << 24), "type id 2 runs past"),
        (struct.pack("<III", 1, 1 << 24, 4) + b"\0\0", "not made of 32-bit words"),
    ],
)
def test_btf_bad_type_section_fails_the_first_lookup(types: bytes, message: str) -> None:
    btf = Btf(btf_blob(b"\0x\0", types))
    with pytest.raises(BtfError, match=message):
        btf.func_id("x")


@pytest.mark.parametrize(
    ("blob", "message"),
    [(b"\0" * 4, "too short"), (struct.pack("<HBBIIIII", 0x1234, 1, 0, 24, 0, 0, 0, 0), "bad magic")],
)
def test_btf_rejects_garbage(blob: bytes, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf(blob)


def test_cpuhp_numbers_from_the_real_states_file(tmp_path: Path) -> None:
    states_file = tmp_path / "sys/devices/system/cpu/hotplug/states"
    states_file.parent.mkdir(parents=True)
    states_file.write_text((FIXTURES / "uevent" / "cpu-hotplug-states.6.18").read_text())
    states = cpuhp_states(str(tmp_path), btf=None)
    assert states is not None and (states.online, states.teardown) == (236, 144)
    assert cpuhp_states(str(tmp_path / "missing"), btf=None) is None


def test_cpu_list() -> None:
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_cpu_list("0") == [0]


# -- doctor's pure parts --------------------------------------------------------


def test_udev_rules_found_and_masked(tmp_path: Path) -> None:
    lib, etc = tmp_path / "lib", tmp_path / "etc"
    lib.mkdir()
    etc.mkdir()
    (lib / "50-kdump-tools.rules").write_text("# debian\n")
    found = check_udev_rules((str(lib), str(etc)))
    assert found.status == "warn" and "50-kdump-tools.rules" in found.found and "ln -s /dev/null" in found.fix
    assert check_udev_rules((str(tmp_path / "none"),)).status == "ok"


def test_kexec_version_parsing() -> None:
    old = check_kexec_binary(lambda argv: "kexec-tools 2.0.25\n")
    assert old.status in ("ok", "missing")  # missing only where no kexec binary exists at all
    if old.status == "ok":
        assert "2.0.25" in old.found and "--hotplug" not in old.found
        new = check_kexec_binary(lambda argv: "kexec-tools 2.0.28")
        assert "--hotplug" in new.found
        odd = check_kexec_binary(lambda argv: "something else")
        assert odd.status == "warn"


def cap(name: str, status: str, required: bool = False) -> Capability:
    return Capability(name, status, "x", required=required)  # type: ignore[arg-type]


def test_run_can_work_needs_required_checks_and_sources() -> None:
    good = [
        cap("root", "ok", True),
        cap("bpf syscall", "ok"),
        cap("BCC + kernel headers", "ok"),
        cap("cpuhp tracepoints", "ok"),
        cap("fentry", "missing"),
        cap("kprobes", "missing"),
        cap("uevents", "ok", True),
        cap("block_size_bytes", "ok", True),
        cap("kdump loaded", "warn", True),
    ]
    assert events_covered(good) == {
        "cpu online/offline": "bpf",
        "cpu add/remove": "uevent",  # no BPF probe: always uevents
        "memory online/offline": "uevent",
        "memory add/remove": "uevent",
    }
    assert run_can_work(good) == (True, [])
    probed = [c if c.name not in ("kprobes", "add/remove probes") else cap(c.name, "ok") for c in good]
    probed.append(cap("add/remove probes", "ok"))
    assert events_covered(probed)["memory online/offline"] == "bpf"
    assert events_covered(probed)["memory add/remove"] == "bpf+uevent"  # uevents alongside, counted once
    bad = [c if c.name != "kdump loaded" else cap("kdump loaded", "missing", True) for c in good]
    ok, problems = run_can_work(bad)
    assert not ok and problems == ["kdump loaded: x"]
    no_events = [c for c in good if c.name not in ("uevents", "cpuhp tracepoints")]
    assert run_can_work(no_events)[1] == [
        "no event source for cpu online/offline",
        "no event source for cpu add/remove",
        "no event source for memory online/offline",
        "no event source for memory add/remove",
    ]
