"""Typed errors shared by every stage.

Every error the CLI can report is a :class:`KdumpCoalesceError`.  Its ``str()``
is one line that names the input or capability at fault, and ``exit_status``
is what the CLI exits with.  Nothing in the package raises a bare
``Exception``; code that catches errors catches these (or specific ``OSError``
subclasses at the kernel boundary).
"""

from __future__ import annotations

# Exit statuses of the CLI, in one place so that tests and docs agree.
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: a reload failed and kdump may be stale
EXIT_BAD_INPUT = 2  # bad input, bad usage, missing privilege: nothing was changed
EXIT_UNAVAILABLE = 3  # a needed capability is missing on this host (doctor says which)


class KdumpCoalesceError(Exception):
    """Base of every error kdump-coalesce reports."""

    exit_status: int = EXIT_FAILURE


class InputError(KdumpCoalesceError):
    """Bad input: a file, a line of it, a config key, a scenario argument.

    ``source`` names the input (a path, ``path:line``, ``--option``, ``config key``)
    so the one-line message tells the operator exactly what to fix.
    """

    exit_status = EXIT_BAD_INPUT

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class TraceFormatError(InputError):
    """A trace file (the JSON-lines event format) is malformed."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}", message)
        self.path = path
        self.line = line


class ConfigError(InputError):
    """The configuration file or a command-line option is invalid."""


class ScenarioError(InputError):
    """A synthetic scenario name or argument is invalid."""


class NeedsRootError(KdumpCoalesceError):
    """An operation needs root (CAP_BPF, CAP_SYS_BOOT, writing sysfs...)."""

    exit_status = EXIT_BAD_INPUT

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (run with sudo)")
        self.what = what


class UnavailableError(KdumpCoalesceError):
    """A capability is missing on this host: ``what`` is missing, ``hint`` says what to do."""

    exit_status = EXIT_UNAVAILABLE

    def __init__(self, what: str, reason: str, hint: str = "") -> None:
        text = f"{what} unavailable: {reason}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.what = what
        self.reason = reason
        self.hint = hint
