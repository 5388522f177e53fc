"""The guest runs the project itself: the venv from the 9p host root, and BCC against the guest's headers."""

from __future__ import annotations

import pytest

from .conftest import BootGuest
from testbed.harness import GUEST_XFER, VENV

pytestmark = pytest.mark.vm

BCC_PROBE = r'''
import time
t0 = time.monotonic()
from bcc import BPF
t1 = time.monotonic()
b = BPF(text="""
TRACEPOINT_PROBE(cpuhp, cpuhp_enter) { return 0; }
""")
t2 = time.monotonic()
print(f"bcc import {t1 - t0:.2f}s compile+load {t2 - t1:.2f}s")
'''


def test_guest_runs_kdump_coalesce_and_bcc(boot_guest: BootGuest) -> None:
    g = boot_guest()
    assert g.run_host("uname -r").text.strip() == g.assets.kernel_release
    # The chroot has what BCC needs: the guest kernel's own headers.
    assert g.run_host("readlink /lib/modules/$(uname -r)/build").text.strip() == str(g.assets.headers)

    imp = g.run_host(f"{VENV}/bin/python -c 'import trio, kdump_coalesce.cli; print(kdump_coalesce.__file__)'")
    assert imp.text.strip().startswith(str(VENV.parent)), imp.text
    helped = g.run_host(f"{VENV}/bin/kdump-coalesce --help")
    assert "run" in helped.text

    (g.xfer / "bcc_probe.py").write_text(BCC_PROBE)
    bcc = g.run_host(f"{VENV}/bin/python {GUEST_XFER}/bcc_probe.py", timeout=300)
    print(f"guest: python+trio+kdump_coalesce import {imp.seconds:.1f}s, --help {helped.seconds:.1f}s, {bcc.text.strip()}")
    assert "compile+load" in bcc.text
