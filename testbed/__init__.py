"""The VM testbed: a qemu (TCG) guest with kdump loaded, driven from the host.

Shared by the VM test tier (``tests/vm``) and the VM bench (``bench/vm``,
``kdump-coalesce bench vm-resize``), and by ``tools/vm/capture-fixtures``.
Not part of the installed package: it lives in the checkout only, next to
``tools/vm`` and ``tools/vm-assets``, which it needs.

- :mod:`testbed.harness`: the guest (qemu, QMP, the command channel, the
  serial console), the VM assets, and parsers of what the guest prints.
- :mod:`testbed.vmcore`: the capture kernel's /proc/vmcore headers.
- :mod:`testbed.daemon`: ``kdump-coalesce run`` arguments for the guest and
  the figures a scenario reports.

docs/vm-testbed.md has the design.
"""
