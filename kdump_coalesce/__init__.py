"""kdump-coalesce: keep kdump's elfcorehdr correct across CPU and memory hotplug.

The package is split by stage, data flowing one way:

    probes (event sources) -> coalescer (batches) -> updater (snapshot, header, load)

``kdump_coalesce`` itself holds the CLI, the daemon that wires the stages, the
configuration and the error types shared by all of them.  Importing it does no
work: no kernel access, no BPF compilation, nothing read from /proc or /sys.
"""

__version__ = "0.1.0"
