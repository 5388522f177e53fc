"""What Debian's packages spell differently from PyPI, bridged before the
program is imported (by /usr/bin/kdump-coalesce and the build's man page
generator).  Each bridge acts only when the API it supplies is missing, so on
a system that has it (trixie's prometheus-client 0.21, a venv) it does nothing.

- pycryptodome: Debian's python3-pycryptodome installs the ``Cryptodome``
  namespace (what PyPI calls pycryptodomex), bookworm and trixie alike; the
  code imports ``Crypto``.  Same API: alias the names the code uses.
- prometheus-client < 0.17 (bookworm: 0.16) has no
  ``disable_created_metrics()``; its ``PROMETHEUS_DISABLE_CREATED_SERIES``
  environment variable does the same but is read at import time, so it is
  set before the first import.
- prometheus-client < 0.20 returns nothing from ``start_http_server``;
  ``MetricsServer`` needs the (server, thread) pair to shut it down.  The
  replacement is 0.20's own function, built from the same parts 0.16 has.

The lasting fix is upstream in the code (a fallback import in
updater/fastpath/_digest.py and kdump_coalesce/_metrics.py); this module goes
once that has landed.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
from typing import Any


def _alias_cryptodome() -> None:
    try:
        importlib.import_module("Crypto.Hash.SHA256")
        return
    except ImportError:
        pass
    try:
        for name in ("Cryptodome", "Cryptodome.Hash", "Cryptodome.Hash.SHA256"):
            sys.modules[name.replace("Cryptodome", "Crypto", 1)] = importlib.import_module(name)
    except ImportError:
        return  # neither namespace: the import error the program reports is the true one


def _prometheus_client() -> None:
    os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    try:
        prom: Any = importlib.import_module("prometheus_client")
        exposition: Any = importlib.import_module("prometheus_client.exposition")
    except ImportError:
        return
    if not hasattr(prom, "disable_created_metrics"):
        prom.disable_created_metrics = lambda: None  # the environment variable above did it
    # 0.20 annotated it "-> Tuple[WSGIServer, threading.Thread]" when it began returning them.
    if inspect.signature(exposition.start_wsgi_server).return_annotation not in (None, "None"):
        return

    def start_http_server(port: int, addr: str = "0.0.0.0", registry: Any = prom.REGISTRY) -> tuple[Any, threading.Thread]:
        from wsgiref.simple_server import make_server

        class Server(exposition.ThreadingWSGIServer):  # type: ignore[misc]
            pass

        Server.address_family, addr = exposition._get_best_family(addr, port)
        httpd = make_server(addr, port, exposition.make_wsgi_app(registry), Server, handler_class=exposition._SilentHandler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        return httpd, thread

    prom.start_http_server = prom.start_wsgi_server = start_http_server
    exposition.start_http_server = exposition.start_wsgi_server = start_http_server


def apply() -> None:
    _alias_cryptodome()
    _prometheus_client()
