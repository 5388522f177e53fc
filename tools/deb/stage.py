#!/usr/bin/python3
"""Copy the program's Python packages into DEST, exactly as pip would install
them: the packages ``[tool.setuptools.packages.find] include`` matches and the
files ``[tool.setuptools.package-data]`` names, read from pyproject.toml.

debian/rules runs this as pybuild's build step (``PYBUILD_SYSTEM=custom``):
bookworm's setuptools (66) cannot read this pyproject (PEP 639 ``license``
string, ``setuptools>=77``), and the packages go to a private directory, not
dist-packages, so nothing of a wheel's metadata is wanted anyway.

    tools/deb/stage.py DEST [--source DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import tomllib
from pathlib import Path


def packages(source: Path) -> tuple[list[str], dict[str, list[str]]]:
    with open(source / "pyproject.toml", "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    include = list(tool["packages"]["find"]["include"])
    found = sorted(
        ".".join(init.parent.relative_to(source).parts)
        for init in source.rglob("__init__.py")
        if not any(part.startswith(".") or part == "__pycache__" for part in init.relative_to(source).parts)
    )
    chosen = [p for p in found if any(fnmatch.fnmatchcase(p, pattern) for pattern in include)]
    # find_packages() only descends into packages: a match under a non-package directory does not count
    chosen = [p for p in chosen if all(".".join(p.split(".")[:i]) in found for i in range(1, p.count(".") + 1))]
    return chosen, {k: list(v) for k, v in tool.get("package-data", {}).items()}


def stage(source: Path, dest: Path) -> list[Path]:
    chosen, data = packages(source)
    written = []
    for pkg in chosen:
        src_dir = source.joinpath(*pkg.split("."))
        patterns = ["*.py", *data.get(pkg, []), *data.get("*", [])]
        files = {p for pattern in patterns for p in src_dir.glob(pattern) if p.is_file()}
        for path in sorted(files):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args(argv)
    written = stage(args.source.resolve(), args.dest)
    if not written:
        print(f"stage.py: nothing matched in {args.source}/pyproject.toml", file=sys.stderr)
        return 1
    print(f"stage.py: {len(written)} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
