"""Pieces several commands share: loading the config, the policy flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from coalescer import Policy

from ground.config import add_section_flags, check_sections, flag_of, load_toml, section_from

DEFAULT_CONFIG = "/etc/kdump-coalesce/config.toml"
# How a section's keys are spelled on the command line: [kexec] binary is
# --kexec-binary, [metrics] listen --metrics-listen; the rest are --KEY.
FLAG_PREFIXES: Mapping[str, str] = {"kexec": "kexec-", "metrics": "metrics-"}


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML configuration file (default: {DEFAULT_CONFIG} when it exists; flags override it)",
    )


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batching policy ([coalescer] in the config file)")
    add_section_flags(group, "coalescer", Policy)


def add_flags_of(parser: argparse.ArgumentParser | argparse._ArgumentGroup, section: str, cls: type[Any]) -> None:
    """The ``cli`` keys of ``section`` as flags, with the section's prefix."""
    add_section_flags(parser, section, cls, FLAG_PREFIXES.get(section, ""))


def section_flag(section: str, key: str) -> str:
    """The flag of ``[section] key`` (for messages that name it)."""
    return flag_of(key.replace("-", "_"), FLAG_PREFIXES.get(section, ""))


def read_config(args: argparse.Namespace, known_sections: Mapping[str, type[Any]]) -> tuple[dict[str, Any], str]:
    """The config document (empty when there is none) and its path."""
    path = getattr(args, "config", None)
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}, ""
        path = DEFAULT_CONFIG
    document = load_toml(path)
    check_sections(document, known_sections, path)
    return document, path


def policy_from(args: argparse.Namespace, document: Mapping[str, Any], path: str) -> Policy:
    return section_from(Policy, "coalescer", document, path, args)
