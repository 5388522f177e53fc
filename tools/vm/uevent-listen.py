"""Record raw kernel uevents (NETLINK_KOBJECT_UEVENT, group 1) as binary files.

Runs in the guest (chrooted into the host root, Debian's python3):

    python3 uevent-listen.py OUTDIR SECONDS

Writes OUTDIR/NNNN-<action>-<devpath basename>.bin, one file per message,
exactly the bytes the kernel sent ("ACTION@DEVPATH\\0KEY=VALUE\\0..."), creates
OUTDIR/.ready once bound, and exits after SECONDS or when OUTDIR/.stop
appears.  Debian's 6.1 has no uevent helper (/proc/sys/kernel/hotplug):
netlink is the only way to see these in a busybox guest.
"""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import time

NETLINK_KOBJECT_UEVENT = 15


def main() -> int:
    out, seconds = sys.argv[1], float(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((0, 1))
    open(os.path.join(out, ".ready"), "w").close()
    deadline = time.monotonic() + seconds
    n = 0
    stopping = False
    while True:
        if not stopping and (time.monotonic() > deadline or os.path.exists(os.path.join(out, ".stop"))):
            stopping = True  # drain what the kernel already queued, then exit
        r, _, _ = select.select([s], [], [], 0 if stopping else 0.1)
        if not r:
            if stopping:
                break
            continue
        msg = s.recv(1 << 16)
        head = msg.split(b"\0", 1)[0].decode("ascii", "replace")
        action, _, devpath = head.partition("@")
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", devpath.rsplit("/", 1)[-1])[:40]
        n += 1
        with open(os.path.join(out, f"{n:04d}-{action}-{base}.bin"), "wb") as f:
            f.write(msg)
    open(os.path.join(out, ".done"), "w").close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
