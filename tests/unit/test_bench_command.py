"""``kdump-coalesce bench``: the JSON schema, the table, the plot, vm-resize."""

from __future__ import annotations

from pathlib import Path

import json
import os

import pytest

from kdump_coalesce.cli import main
from ground.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE

METRICS = {"reloads", "settle_s", "exposure_s", "max_window_s", "stale_s", "cpu_s"}
STRATEGIES = {"udev-serial", "udev-throttle", "load-once", "kernel", "kdump-coalesce"}


def test_json_is_one_object_with_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # exactly one object: anything else fails to parse
    assert set(doc) == {"scenario", "source", "strategies"}
    assert doc["scenario"] == "cpu" and doc["source"] == "model"
    assert set(doc["strategies"]) == STRATEGIES
    for name, metrics in doc["strategies"].items():
        assert set(metrics) == METRICS, name
        assert isinstance(metrics["reloads"], int)
        for key in METRICS - {"reloads", "settle_s"}:
            assert isinstance(metrics[key], float | int) and metrics[key] >= 0, (name, key)
        assert metrics["settle_s"] is None or metrics["settle_s"] >= 0
    # behaviour visible in the JSON: one reload per CPU event for udev-serial
    # (64 CPUs x add + online), none for the in-kernel update
    assert doc["strategies"]["udev-serial"]["reloads"] == 128
    assert doc["strategies"]["kernel"]["reloads"] == 0


def test_table_reports_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "churn"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("scenario churn")
    for name in STRATEGIES:
        assert f"\n{name} " in out
    assert "targets (kdump-coalesce" in out and "MISSED" not in out


def test_only_chosen_strategies_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cpu", "--json", "--strategy", "kernel", "--set", "kernel_rebuild_s=0.01"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["strategies"]) == {"kernel"}
    assert doc["strategies"]["kernel"]["exposure_s"] == pytest.approx(64 * 0.01)


def test_plot_writes_a_png(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = os.path.join(str(tmp_path), "t.png")
    assert main(["bench", "churn", "--plot", path]) == 0
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert path in capsys.readouterr().out


def test_vm_resize_outside_a_checkout_is_one_line_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The real VM bench runs in the vm tier (tests/vm/test_bench_vm.py); here,
    # only its refusal when the harness is not beside the package (an install).
    import kdump_coalesce.commands.bench as bench_command

    monkeypatch.setattr(bench_command, "CHECKOUT", tmp_path)
    assert main(["bench", "vm-resize"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "VM harness" in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "resize-9x"]) == EXIT_BAD_INPUT
    assert main(["bench", "cpu", "--set", "cpus"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown scenario" in err[0] and "PARAM=VALUE" in err[1]
