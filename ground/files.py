"""The one atomic file writer: a reader sees the old file or the new one, never a part.

The status file, the trace's staging manifests, the metrics textfile and the
service installer's files all go through :func:`atomic_write`: a temporary file
in the same directory (so that rename(2) cannot cross a file system), written,
fchmod'ed and fsync'ed, then renamed over the target.  The temporary name
starts with a dot and ends in ``.tmp``, so that no collector that globs for
``*.prom`` or ``*.rules`` picks it up half-written; it is removed when the
write fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, make_parents: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically, with permission bits ``mode``
    (applied with fchmod, so the umask does not narrow them: node_exporter and
    systemd read these files as other users).  Raises :class:`OSError`."""
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
