"""The project's benchmarks: the strategy model, the VM bench and the scripts beside them.

Not part of the installed package (pyproject's package list leaves it out):
``kdump-coalesce bench`` imports it from the checkout it runs from.

- :mod:`bench.model`: every distro's reload strategy, the in-kernel update and
  kdump-coalesce on the same synthetic scenarios, on trio's virtual clock
  (``kdump-coalesce bench resize-480x1g``).
- :mod:`bench.vm`: the same strategies for real in the VM tier's qemu guest
  (``kdump-coalesce bench vm-resize``; the guest is :mod:`testbed.harness`).
- Scripts, run as ``.venv/bin/python bench/NAME.py``: ``calibrate.py``,
  ``coalesce_throughput.py``, ``latency.py``, ``idle_cpu.py``,
  ``fastpath_bench.py``.

bench/README.md has the targets, the figures and how to reproduce them.
"""
