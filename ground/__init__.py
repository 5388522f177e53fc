"""The ground under the three stages: what every layer shares and nothing else.

    ground  <-  probes  <-  coalescer  <-  updater  <-  kdump_coalesce (CLI, daemon, ops)

Nothing here imports any other package of the project (the import contract in
``tests/unit/test_layers.py`` and ``pyproject.toml`` enforces it), and nothing
here touches the kernel.  What lives here:

- :mod:`ground.errors`: the typed exceptions and exit codes;
- :mod:`ground.config`: config sections as dataclasses, TOML, flags;
- :mod:`ground.ranges`: :class:`~ground.ranges.PhysRange`, the one physical range type;
- :mod:`ground.events`: the hotplug events sources emit;
- :mod:`ground.records`: the typed records stages emit (batch, reload, error,
  kexec call, status) and their one JSON serialiser;
- :mod:`ground.observer`: the observer protocol every stage reports to;
- :mod:`ground.kexec_log`: the kexec syscall log (filled by probes, read by the updater);
- :mod:`ground.tracefile`: the trace file format (JSON lines);
- :mod:`ground.files`: the atomic file writer.
"""
