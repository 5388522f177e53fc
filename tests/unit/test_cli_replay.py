"""The CLI's replay command, end to end in-process, and its bad-input paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdump_coalesce.cli import main
from ground.errors import EXIT_BAD_INPUT
from probes import build_scenario
from ground.tracefile import TraceHeader, open_trace_for_writing

GIB = 1 << 30


def replay_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert main(["replay", "--json", *argv]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def test_resize_one_dimm_is_one_batch_of_one_range(capsys: pytest.CaptureFixture[str]) -> None:
    (batch,) = replay_json(capsys, "--scenario", "resize:32G:512G")
    assert batch["events"] == 3840
    assert batch["online"] == [[33 * GIB, 513 * GIB]]  # one contiguous 480 GiB range
    assert batch["offline"] == [] and batch["cpus_added"] == [] and batch["rescan"] is False


def test_resize_480_dimms_is_one_range(capsys: pytest.CaptureFixture[str]) -> None:
    (batch,) = replay_json(capsys, "--scenario", "resize:32G:512G:dimm=1G")
    assert batch["events"] == 3840
    assert batch["online"] == [[33 * GIB, 513 * GIB]]


def test_resize_with_add_events_counts_both(capsys: pytest.CaptureFixture[str]) -> None:
    (batch,) = replay_json(capsys, "--scenario", "resize:32G:512G:add=yes")
    assert batch["events"] == 7680
    assert batch["added"] == batch["online"] == [[33 * GIB, 513 * GIB]]


def test_churn_is_net_empty(capsys: pytest.CaptureFixture[str]) -> None:
    (batch,) = replay_json(capsys, "--scenario", "churn:4G")
    assert batch["events"] == 128
    for key in ("online", "offline", "added", "removed", "cpus_added", "cpus_removed"):
        assert batch[key] == [], key
    assert batch["needs_update"] is False


def test_cpu_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    (batch,) = replay_json(capsys, "--scenario", "cpu:2:8")
    assert batch["cpus_added"] == batch["cpus_online"] == [2, 3, 4, 5, 6, 7]


def test_recorded_speed_splits_bursts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # two bursts 1.5 s apart at 100x speed are 15 ms apart: with quiet=5ms they split
    trace = tmp_path / "t.jsonl"
    w = open_trace_for_writing(str(trace), TraceHeader("h", "k", 128 << 20, 0.0))
    events = build_scenario("resize:4G:6G:dimm=1G:dimm_gap=1500ms").events
    for ev in events:
        w.item(ev)
    w.close()
    batches = replay_json(capsys, str(trace), "--speed", "100", "--quiet", "0.005", "--max-delay", "1")
    assert [b["events"] for b in batches] == [8, 8]


def test_output_file_replays_to_the_same_batches(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = replay_json(capsys, "--scenario", "cpu:2:4", "--output", str(out))
    again = replay_json(capsys, str(out))
    strip = ("opened_at", "closed_at")
    assert [{k: v for k, v in b.items() if k not in strip} for b in first] == [
        {k: v for k, v in b.items() if k not in strip} for b in again
    ]


def write_trace(path: Path) -> None:
    w = open_trace_for_writing(str(path), TraceHeader("h", "k", 128 << 20, 0.0))
    for ev in build_scenario("resize:4G:5G").events:
        w.item(ev)
    w.close()


def test_truncated_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace)
    trace.write_text(trace.read_text()[:-7])
    assert main(["replay", str(trace)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert f"{trace}:9: truncated record" in line


def test_garbage_line_strict_then_lenient(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace)
    lines = trace.read_text().splitlines(keepends=True)
    lines.insert(3, "\x00garbage{\n")
    trace.write_text("".join(lines))
    assert main(["replay", str(trace)]) == EXIT_BAD_INPUT
    assert f"{trace}:4: not JSON" in capsys.readouterr().err
    assert main(["replay", "--json", str(trace), "--lenient"]) == 0
    captured = capsys.readouterr()
    (batch,) = [json.loads(line) for line in captured.out.splitlines()]
    assert batch["events"] == 8
    assert "skipped 1 malformed line(s)" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenario", "bogus:1"], "unknown scenario 'bogus'"),
        (["--scenario", "resize:32G"], "missing TO size"),
        (["--scenario", "resize:32G:512G:dimm=7G"], "not a whole number of 7G DIMMs"),
        (["--scenario", "resize:32G:512G:colour=red"], "unknown option(s): colour"),
        (["--scenario", "resize:32X:512G"], "FROM size: not a size"),
        ([], "give exactly one of FILE or --scenario"),
        (["--scenario", "churn:1G", "--speed", "0"], "--speed: must be > 0"),
        (["--scenario", "churn:1G", "--quiet", "-1"], "quiet: must be > 0"),
        (["/nonexistent/trace.jsonl"], "/nonexistent/trace.jsonl:0: cannot open"),
    ],
)
def test_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["replay", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err


def test_bad_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[coalescer]\nquiet = 2\nquite = 3\n")
    assert main(["replay", "--scenario", "churn:1G", "--config", str(cfg)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{cfg}: [coalescer].quite: unknown key" in err
    cfg.write_text("[coalescer]\nquiet = 'soon'\n")
    assert main(["replay", "--scenario", "churn:1G", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "expected a number" in capsys.readouterr().err
    cfg.write_text("[colander]\n")
    assert main(["replay", "--scenario", "churn:1G", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "[colander]: unknown section" in capsys.readouterr().err
    cfg.write_text("[coalescer\n")
    assert main(["replay", "--scenario", "churn:1G", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "not valid TOML" in capsys.readouterr().err


def test_config_values_apply_and_flags_override(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    trace = tmp_path / "t.jsonl"
    w = open_trace_for_writing(str(trace), TraceHeader("h", "k", 128 << 20, 0.0))
    for ev in build_scenario("resize:4G:6G:dimm=1G:dimm_gap=1s").events:
        w.item(ev)
    w.close()
    # At 10x the blocks of a DIMM are 1 ms apart and the DIMMs 100 ms: a 30 ms
    # quiet splits the DIMMs with a wide margin on either side (a 2 ms quiet at
    # 100x split a DIMM whenever the machine was busy).
    cfg.write_text("[coalescer]\nquiet = 0.03\nmax-delay = 1.0\n")
    assert len(replay_json(capsys, str(trace), "--speed", "10", "--config", str(cfg))) == 2
    # the flag overrides the file: a 0.5 s quiet swallows the 100 ms gap
    assert len(replay_json(capsys, str(trace), "--speed", "10", "--config", str(cfg), "--quiet", "0.5")) == 1


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out
