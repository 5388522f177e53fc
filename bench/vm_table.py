#!/usr/bin/env python3
"""Merge ``kdump-coalesce bench vm-resize --json`` outputs (one strategy per run) into one table.

The full-scale runs (issue 15) take one VM-lock turn per strategy, each its
own ``--json`` file; this prints them as one table (with the targets and
the extrapolation rows) and, with ``--plot``, one timeline.

Usage:  .venv/bin/python bench/vm_table.py RUN.json ... [--plot FILE.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.vm import render_table  # noqa: E402


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not docs:
        raise SystemExit("vm_table: no run files")
    out = dict(docs[0])
    out["strategies"], out["details"] = {}, {}
    out["interrupted"] = any(d.get("interrupted") for d in docs)
    for d in docs:
        out["strategies"].update(d["strategies"])
        out["details"].update(d["details"])
        out["blocks"] = out.get("blocks") or d.get("blocks")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN.json")
    ap.add_argument("--plot", metavar="FILE.png")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    docs = []
    for p in args.runs:
        text = Path(p).read_text()
        if text.strip():
            docs.append(json.loads(text))
    doc = merge(docs)
    if args.plot:
        from bench.vm._plot import plot_vm

        plot_vm(doc, args.plot)
    print(json.dumps(doc) if args.json else render_table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
