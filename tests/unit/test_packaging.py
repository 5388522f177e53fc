"""The Debian package's pieces that can be checked without building it: the
default config is what the code declares, the staged tree is what pip would
install, the packaged unit is the install-service unit plus the take-over,
the take-over masks and gives back exactly, control depends on Debian
packages for every Python dependency, and the launcher's compatibility layer
makes the code run on bookworm's own python3-* modules.  (The build itself,
lintian and the package on a real system: tests/vm/test_deb_takeover.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ground.config import build_section
from kdump_coalesce._distro_rules import RUNTIME_DIR, give_back, is_our_mask, rule_state, take_over
from kdump_coalesce._install import unit_template
from kdump_coalesce.commands.run import SECTIONS

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "debian"
sys.path.insert(0, str(REPO / "tools" / "deb"))
import default_config  # noqa: E402
import stage  # noqa: E402
import unit  # noqa: E402

from tests.unit.test_ops_install import DEBIAN_RULE  # noqa: E402

# pyproject name -> Debian package
DEBIAN_NAMES = {
    "trio": "python3-trio",
    "pyelftools": "python3-pyelftools",
    "pycryptodome": "python3-pycryptodome",
    "rich": "python3-rich",
    "prometheus_client": "python3-prometheus-client",
}


def test_shipped_config_is_the_generated_one() -> None:
    shipped = (REPO / "kdump_coalesce/data/config.toml").read_text()
    assert shipped == default_config.render(SECTIONS), "regenerate: tools/deb/default_config.py > kdump_coalesce/data/config.toml"


def test_shipped_config_is_all_comments_and_every_key_is_valid() -> None:
    text = (REPO / "kdump_coalesce/data/config.toml").read_text()
    assert tomllib.loads(text) == {k: {} for k in tomllib.loads(text)}  # sections only, no key set
    uncommented = re.sub(r"^#([a-z0-9-]+ = )", r"\1", text, flags=re.M)
    doc = tomllib.loads(uncommented)
    assert set(doc) == {name for name, cls in SECTIONS.items() if doc.get(name) is not None}
    keys = 0
    for name, values in doc.items():
        section = build_section(SECTIONS[name], values, f"config.toml [{name}]")
        assert section == SECTIONS[name](), f"[{name}]: a commented default differs from the code's"
        keys += len(values)
    assert keys >= 30


def test_stage_matches_packages_find(tmp_path: Path) -> None:
    written = stage.stage(REPO, tmp_path)
    top = {p.relative_to(tmp_path).parts[0] for p in written}
    assert top == {"ground", "probes", "coalescer", "updater", "kdump_coalesce"}
    rel = {str(p.relative_to(tmp_path)) for p in written}
    for must in ("kdump_coalesce/cli.py", "kdump_coalesce/data/kdump-coalesce.service", "kdump_coalesce/data/config.toml",
                 "updater/fastpath/__init__.py", "ground/py.typed"):
        assert must in rel, must
    assert not any("__pycache__" in r or r.startswith(("tests", "bench", "testbed")) for r in rel)


def test_packaged_unit_is_the_template_plus_the_takeover() -> None:
    from tests.unit.test_ops_unit_file import settings

    packaged = settings(unit.packaged_unit())
    template = settings(unit_template())
    for key, values in template.items():
        if key == ("Service", "ExecStart"):
            continue
        assert packaged[key] == values, key
    assert packaged[("Service", "ExecStart")] == ["/usr/bin/kdump-coalesce run"]
    assert packaged[("Service", "ExecStartPost")] == [f"-+{unit.TAKEOVER} take-over"]
    assert packaged[("Service", "ExecStop")] == [f"-+{unit.TAKEOVER} give-back"]
    assert packaged[("Service", "ExecStopPost")] == [f"-+{unit.TAKEOVER} give-back"]


def debian_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "lib/udev/rules.d").mkdir(parents=True)
    (root / "lib/udev/rules.d/50-kdump-tools.rules").write_text(DEBIAN_RULE)
    return root


def test_take_over_masks_in_run_and_give_back_restores(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    assert rule_state(str(root), "50-kdump-tools.rules").active
    notes = take_over(str(root))
    assert notes == [f"masked /lib/udev/rules.d/50-kdump-tools.rules with /{RUNTIME_DIR}/50-kdump-tools.rules"]
    state = rule_state(str(root), "50-kdump-tools.rules")
    assert state.effective == f"{RUNTIME_DIR}/50-kdump-tools.rules" and state.masked_by_us and not state.active
    assert not (root / "etc").exists(), "the take-over must not touch /etc"
    assert take_over(str(root)) == []  # idempotent: already masked
    notes = give_back(str(root))
    assert len(notes) == 1 and notes[0].startswith(f"removed /{RUNTIME_DIR}/50-kdump-tools.rules")
    assert rule_state(str(root), "50-kdump-tools.rules").active
    assert not (root / RUNTIME_DIR).exists(), "give_back leaves the empty directory take_over made"
    assert give_back(str(root)) == []


def test_take_over_respects_an_admins_override_and_give_back_only_removes_ours(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    etc = root / "etc/udev/rules.d"
    etc.mkdir(parents=True)
    (etc / "50-kdump-tools.rules").write_text('SUBSYSTEM=="memory", RUN+="/usr/local/sbin/site-reload"\n')
    assert take_over(str(root)) == ["left /etc/udev/rules.d/50-kdump-tools.rules alone: an override that still reloads on every event"]
    assert not (root / RUNTIME_DIR / "50-kdump-tools.rules").exists()
    (etc / "50-kdump-tools.rules").unlink()
    run_dir = root / RUNTIME_DIR
    run_dir.mkdir(parents=True)
    (run_dir / "50-kdump-tools.rules").write_text("# someone else's runtime mask\n")
    assert give_back(str(root)) == []
    assert (run_dir / "50-kdump-tools.rules").exists()


def control_depends() -> dict[str, str]:
    text = (DEB / "control").read_text()
    binary = text.split("\nPackage: kdump-coalesce\n", 1)[1]
    field = re.search(r"^Depends:(.*?)(?=^\S)", binary, re.M | re.S)
    assert field is not None
    out = {}
    for item in field.group(1).replace("\n", " ").split(","):
        item = item.strip()
        if not item or item.startswith("${"):
            continue
        m = re.fullmatch(r"([a-z0-9][a-z0-9.+-]+)(?:\s*\(>= ([^)]+)\))?", item)
        assert m, f"not a plain Debian dependency: {item!r}"
        out[m.group(1)] = m.group(2) or ""
    return out


def test_control_depends_on_the_debian_package_of_every_python_dependency() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    depends = control_depends()
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep)
        assert name is not None
        debian = DEBIAN_NAMES.get(name.group(0))
        assert debian is not None, f"{dep}: which Debian package provides it?"
        assert debian in depends, f"debian/control Depends lacks {debian} (for {dep})"
    assert {"python3-bpfcc", "kexec-tools"} <= set(depends)
    assert not any(d.startswith(("python-", "pip")) for d in depends)


DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_MODULES_CHECK = """
import sys, urllib.request
sys.path[:0] = [sys.argv[1]]
from kdump_coalesce._metrics import MetricsObserver, MetricsServer
from updater.fastpath._digest import recompute_digest, PrefixDigest
m = MetricsObserver()
server = MetricsServer(m, "127.0.0.1", 0)
text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
server.close()
assert "kdump_coalesce_build_info" in text and "_created" not in text, text[:300]
from kdump_coalesce.cli import build_parser
build_parser()
import importlib.metadata as md
print(" ".join(f"{d}={md.version(d)}" for d in ("trio", "pyelftools", "prometheus_client", "rich")))
"""


def test_the_code_runs_on_debians_own_modules() -> None:
    """/usr/bin/python3 with Debian's python3-* packages (bookworm: trio 0.22,
    prometheus-client 0.16, pycryptodome's Cryptodome namespace): what the
    .deb runs.  The checkout's venv is not involved.  Bookworm's modules
    are the older side of every fallback in updater/fastpath/_digest.py and
    kdump_coalesce/_metrics.py; the venv's (PyPI's) the newer, in
    test_ops_metrics.py."""
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import trio, prometheus_client, elftools, rich, Cryptodome"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("Debian's python3-trio/-prometheus-client/-pyelftools/-rich/-pycryptodome are not installed (./bootstrap deb installs them)")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([DEBIAN_PYTHON, "-I", "-c", DEBIAN_MODULES_CHECK, str(REPO)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trio=" in proc.stdout




def test_trixie_root_holds_every_depends_of_the_deb() -> None:
    """The trixie guest has no network: `apt-get install ./kdump-coalesce_*.deb`
    there resolves from what tools/vm/build-trixie-root put in the root."""
    script = (REPO / "tools" / "vm" / "build-trixie-root").read_text()
    listed = re.search(r"^packages=\((.*?)^\)", script, re.M | re.S)
    assert listed is not None, "no packages=( ... ) in build-trixie-root"
    packages = set(listed.group(1).split())
    missing = set(control_depends()) - packages
    assert not missing, f"tools/vm/build-trixie-root lacks the .deb's Depends {sorted(missing)}"
    assert {"kdump-tools", "kexec-tools", "systemd", "linux-image-amd64", "linux-headers-amd64"} <= packages
