"""``kdump-coalesce replay``: run recorded or synthetic events through the coalescer."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from coalescer import BatchRecorder, Policy, TraceObserver, run_pipeline
from ground.observer import FanOut
from probes import SCENARIOS, open_sources
from ground.tracefile import TraceHeader, open_trace_for_writing

from ground.errors import EXIT_OK, ConfigError
from ._common import add_config_flag, add_policy_flags, policy_from, read_config

NAME = "replay"
ORDER = 40

EPILOG = f"""\
scenarios ({', '.join(SCENARIOS)}), see 'Scenarios' in the README:
  resize:FROM:TO[:dimm=SIZE][:interval=DUR][:dimm_gap=DUR][:add=yes][:block=SIZE]
  shrink:FROM:TO[:interval=DUR][:remove=no]
  churn:SIZE
  cpu:FROM:TO[:interval=DUR]

examples:
  kdump-coalesce replay --scenario resize:32G:512G --json
      the RFC's 480 GiB DIMM: 3840 online events, as fast as possible: one batch
  kdump-coalesce replay --scenario resize:32G:512G:dimm=1G:interval=100ms --speed 1
      480 x 1 GiB DIMMs at recorded speed: batches bounded by --max-delay
  kdump-coalesce replay /var/tmp/incident.jsonl --lenient
      re-run a trace written by 'trace --output', skipping malformed lines
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="fold a recorded trace or a synthetic scenario into batches",
        description="Run events from a trace file or a synthetic scenario through the coalescer "
        "and print one line per batch. Nothing is loaded: this is the coalescer alone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="a trace file (JSON lines, as written by 'trace --output')")
    p.add_argument("--scenario", metavar="NAME[:ARGS]", help="a synthetic scenario instead of a file")
    p.add_argument("--json", action="store_true", help="one JSON object per batch")
    p.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="N",
        help="pace events at N x their recorded speed (default: as fast as possible)",
    )
    p.add_argument("--lenient", action="store_true", help="skip malformed trace lines (counted on stderr)")
    p.add_argument("--output", metavar="FILE", help="also write events and batches as a trace file")
    add_config_flag(p)
    add_policy_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.scenario is None):
        raise ConfigError("replay", "give exactly one of FILE or --scenario NAME[:ARGS]")
    if args.speed is not None and args.speed <= 0:
        raise ConfigError("--speed", f"must be > 0, got {args.speed}")
    document, path = read_config(args, {"coalescer": Policy})
    policy = policy_from(args, document, path)
    spec = f"replay:{args.file}" if args.file is not None else f"scenario:{args.scenario}"
    selection = open_sources(spec, speed=args.speed, lenient=args.lenient)
    if selection.reader is not None and selection.reader.skipped:
        for line in selection.reader.errors[:5]:
            print(f"kdump-coalesce replay: skipped {line}", file=sys.stderr)
        print(f"kdump-coalesce replay: skipped {selection.reader.skipped} malformed line(s)", file=sys.stderr)

    recorder = BatchRecorder(sys.stdout, as_json=args.json)
    observer = FanOut()
    writer = None
    if args.output:
        header = TraceHeader.for_this_host(selection.block_size or 128 << 20)
        try:
            writer = open_trace_for_writing(args.output, header)
        except OSError as exc:
            raise ConfigError(args.output, f"cannot write trace: {exc.strerror}") from exc
        observer.add(TraceObserver(writer))

    async def main() -> None:
        await run_pipeline(selection.sources, recorder, policy, observer)

    try:
        trio.run(main)
    finally:
        if writer is not None:
            writer.close()
    events = sum(b.events for b in recorder.batches)
    summary = {"batches": len(recorder.batches), "events": events, "reloads_needed": sum(b.needs_update for b in recorder.batches)}
    print(f"kdump-coalesce replay: {json.dumps(summary)}", file=sys.stderr)
    return EXIT_OK
