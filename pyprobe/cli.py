"""The `pyprobe` command line: `replay` a capture, `run` the sensor, `check` its configuration,
`collect` what a probe sends. Settings shared with the sensor take their flags from `config`."""
from __future__ import annotations

import argparse
import errno
import gc
import logging
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from . import __version__
from .config import (BIFLOW_TEMPLATE, SensorConfig, add_arguments, flags, load_config,
                     overrides_of, to_yaml)
from .export.elements import ElementRegistry
from .export.filetransport import STDOUT
from .export.jsonlines import json_line
from .errors import CaptureError, PyprobeError
from .flow import EndReason, Flow
from .probe import ExportSummary, Probe
from .crew import run
from .metrics import add_up, details, status
from .sensor import Counters, check_capture, collectors_of, stream_of, worker_config
from .capture import PcapSource
from .stream import FlowStream, MeterStats
from .workers import Rendezvous, run_sharded

log = logging.getLogger("pyprobe")

# The settings replay takes from the schema: the meter's and the collectors'.
REPLAY_SETTINGS = [key for _, key, _, _ in flags()
                   if key.startswith(("cache.", "dpi.", "collectors.", "sampling."))
                   or key in ("capture.bpf", "capture.workers", "capture.skip_corrupt",
                              "capture.ingress_interface", "capture.egress_interface",
                              "capture.direction")]

PROGRESS_DELAY_S = 0.5  # a replay shorter than this shows no bar
SEND_FAILED = 1  # replay's exit status when messages could not be sent (errors: 2)
GC_THRESHOLD = 100_000  # allocations between the cyclic collector's youngest passes (700 by default)

TABLE_COLUMNS = "{:<5} {:>21} {:>21} {:>4} {:>9} {:>13} {:>12} {:>8} {:<6} {}"
TABLE_HEADER = TABLE_COLUMNS.format("proto", "source", "destination", "vlan", "packets", "bytes",
                                    "first (UTC)", "duration", "end", "application")
"""120 columns with an IPv4 row and a 12-character application (`--json` has every value)."""
PROTOCOL_NAMES = {1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 33: "DCCP", 41: "IPv6",
                  47: "GRE", 50: "ESP", 51: "AH", 58: "ICMP6", 89: "OSPF", 103: "PIM",
                  112: "VRRP", 132: "SCTP"}
"""The table's names of IP protocols (nfdump's); others show their number."""
END_NAMES = {EndReason.IDLE_TIMEOUT: "idle", EndReason.ACTIVE_TIMEOUT: "active",
             EndReason.END_OF_FLOW: "closed", EndReason.FORCED_END: "forced",
             EndReason.LACK_OF_RESOURCES: "full"}
"""The table's flowEndReason: idle or active timeout, closed (FIN, RST), forced (the end of
the capture), full (the cache was: lack of resources)."""


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def format_flow(flow: Flow) -> str:
    """One table row: both directions' packets and bytes as `src->dst+dst->src`."""
    first = datetime.fromtimestamp(flow.first_seen_ms / 1000, timezone.utc)
    return TABLE_COLUMNS.format(
        PROTOCOL_NAMES.get(flow.protocol, flow.protocol), _endpoint(flow.src_ip, flow.src_port),
        _endpoint(flow.dst_ip, flow.dst_port), flow.vlan_id,
        f"{flow.src2dst_packets}+{flow.dst2src_packets}",
        f"{flow.src2dst_bytes}+{flow.dst2src_bytes}", first.strftime("%H:%M:%S.%f")[:-3],
        f"{flow.bidirectional_duration_ms / 1000:.3f}", END_NAMES[flow.end_reason],
        flow.application_name)


def format_summary(stats: MeterStats) -> str:
    """The run's counters, one line each."""
    summary = stats.to_dict()
    lines = [f"packets read {summary['packets_read']}, decoded {summary['packets_decoded']}, "
             f"skipped {summary['packets_skipped']} ({summary['skipped_octets']} octets)"]
    lines += [f"  skipped: {reason}: {count}" for reason, count in sorted(stats.skipped.items())]
    if stats.sampled_out:
        lines.append(f"  sampled out (not metered): {stats.sampled_out} ({stats.sampled_out_octets} "
                     f"captured octets)")
    lines.append(f"flows {summary['flows']}: " + ", ".join(
        f"{reason} {count}" for reason, count in summary["flows_by_end_reason"].items()))
    if stats.uninspected_flows:
        lines.append(f"  not inspected by nDPI (past its budget of new flows a second): "
                     f"{stats.uninspected_flows}")
    if stats.corrupt_records:
        lines.append(f"corrupt records {stats.corrupt_records} ({stats.corrupt_octets} octets "
                     f"not read), the first {stats.corruption}")
    lines.append(f"{summary['elapsed_s']:.3f} s, {summary['packets_per_s']} packets/s")
    return "\n".join(lines)


class ProgressBar:
    """A tqdm bar on stderr while a capture file is replayed: the share of its octets read,
    the time left, the packets and flows so far."""

    def __init__(self, stream: FlowStream) -> None:
        self.stream = stream
        self.bar = tqdm(desc=os.path.basename(stream.source_name), total=None, unit="B",
                        unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False,
                        delay=PROGRESS_DELAY_S, dynamic_ncols=True)

    def __call__(self, stats: MeterStats) -> None:
        read, size = self.stream.position()
        if size:
            self.bar.total = size
            self.bar.set_postfix_str(f"{stats.packets_read:,} packets, "
                                     f"{sum(stats.flows.values()):,} flows", refresh=False)
            self.bar.update(min(read, size) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def bounded(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a `kind` (int or float) from `low` to `high` (None: no bound), finite."""
    noun = "an integer" if kind is int else "a number"
    expected = f"{noun} from {low} to {high}" if high is not None else f"{noun} of at least {low}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= (math.inf if high is None else high):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyprobe", description=__doc__,
        epilog="Without a command, softflowd's and nProbe's options: `pyprobe -r FILE -n "
               "HOST:PORT -v 9` replays FILE, `pyprobe -i IFACE -n HOST:PORT` runs.")
    parser.add_argument("--version", action="version", version=f"pyprobe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="meter a capture file and print or export its flows")
    replay.add_argument("file", nargs="?", help="pcap or pcapng capture")
    replay.add_argument("-r", dest="read", metavar="FILE",
                        help="the capture, as softflowd's -r names it (instead of FILE)")
    replay.add_argument("--json", action="store_true",
                        help="one JSON object per flow on stdout (the summary goes to stderr)")
    add_arguments(replay, REPLAY_SETTINGS)
    replay.add_argument("--biflow", action="store_true",
                        help=f"one RFC 5103 biflow record per flow instead of one per direction "
                             f"(IPFIX; template {BIFLOW_TEMPLATE.name})")
    replay.add_argument("--pace", action="store_true",
                        help="send at the capture's own speed instead of as fast as possible")
    replay.add_argument("--speed", type=bounded(float, 0.001, 1_000_000), metavar="X",
                        help="pace at X times the capture's speed (implies --pace; default 1)")
    for name, text in (("run", "capture live (or a file) and export, configured by a YAML file "
                                "and flags, until SIGTERM"),
                       ("check", "validate a configuration and its templates, print it in full")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
        add_arguments(command)
    commands.choices["run"].add_argument(
        "--status", action="store_true",
        help="print the counters of the sensor running with this configuration (read from its "
             "metrics.listen, or --metrics), worker by worker, and exit")
    collect = commands.add_parser("collect", help="decode IPFIX / NetFlow v9 arriving on a UDP "
                                                  "port (or IPFIX on a TCP port, or in a file)")
    source = collect.add_mutually_exclusive_group(required=True)
    source.add_argument("--port", type=bounded(int, 0, 65535),
                        help="UDP port to listen on (0: a free one, which it prints)")
    source.add_argument("--file", metavar="FILE",
                        help="read the IPFIX messages of FILE (RFC 5655; -: stdin) instead")
    collect.add_argument("--tcp", action="store_true",
                         help="listen on TCP instead (IPFIX over TCP, RFC 7011 10.4)")
    collect.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    collect.add_argument("--json", action="store_true", help="one JSON object per record")
    collect.add_argument("--count", type=bounded(int, 1), metavar="N",
                         help="stop after N messages")
    collect.add_argument("--timeout", type=bounded(float, 0.001, 1_000_000), metavar="S",
                         help="stop after S seconds without a message")
    return parser


def format_export_summary(summary: ExportSummary) -> str:
    """What was sent, then what did not fit its wire field and how it went out (if any)."""
    return (f"exported {summary.flows} flows as {summary.records} records in {summary.messages} "
            f"messages, {summary.octets} octets, {summary.send_errors} send errors"
            + "".join(f"\n  {reason}: {count}"
                      for reason, count in sorted(summary.problems.items()) if count))


def meter(args: argparse.Namespace, config: SensorConfig, stream: FlowStream, out: TextIO,
          *, header: bool = True) -> ExportSummary | None:
    """Runs the stream: exports its flows when collectors are set, else writes them to `out`."""
    if config.collectors:
        registry = ElementRegistry.default()
        collectors = collectors_of(config, registry, biflow=args.biflow)
        return Probe(stream, collectors, registry,
                     speed=args.speed or (1.0 if args.pace else None)).run()
    for count, flow in enumerate(stream):
        if args.json:
            out.write(json_line(flow))
            continue
        if header and not count:
            out.write(TABLE_HEADER + "\n")
        out.write(format_flow(flow) + "\n")
    return None


def meter_sharded(args: argparse.Namespace, config: SensorConfig
                  ) -> tuple[MeterStats, ExportSummary | None]:
    """`--workers N`: each worker meters its share of the flows (observation domain + its
    index); their flows are written out in worker order, their counts added up."""
    capture = PcapSource(args.file, bpf_filter=config.capture.bpf)
    capture.close()
    with tempfile.TemporaryDirectory(prefix="pyprobe-") as folder:
        def work(index: int, share: str | None, rendezvous: Rendezvous
                 ) -> tuple[MeterStats, ExportSummary | None]:
            mine = worker_config(config, index, share)
            stream = stream_of(mine, args.file, end_clock=rendezvous.end_clock)
            with open(Path(folder, str(index)), "w", encoding="utf-8") as out:
                summary = meter(args, mine, stream, out, header=False)
            return stream.stats, summary

        results = run_sharded(config.capture.workers, capture.linktype, config.capture.bpf, work)
        rows = [Path(folder, str(index)).read_text(encoding="utf-8")
                for index in range(config.capture.workers)]
    if any(rows) and not args.json and not config.collectors:
        sys.stdout.write(TABLE_HEADER + "\n")
    sys.stdout.writelines(rows)
    stats, summaries = [s for s, _ in results], [s for _, s in results]
    return (sum(stats[1:], stats[0]),
            sum(summaries[1:], summaries[0]) if config.collectors else None)


def replay(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.read is None):
        raise PyprobeError("replay reads one capture: give FILE or -r FILE")
    args.file = args.file or args.read
    config = load_config(None, overrides_of(args) | {"capture.file": args.file},
                         need_collectors=False)
    if config.capture.workers > 1:
        stats, summary = meter_sharded(args, config)
    else:
        stream = stream_of(config, args.file)
        # A bar on a terminal's stderr, unless the flows are printed on the same terminal
        flows_out = not config.collectors or any(c.file == STDOUT for c in config.collectors)
        if sys.stderr.isatty() and not (flows_out and sys.stdout.isatty()):
            stream.progress = ProgressBar(stream)
        try:
            summary = meter(args, config, stream, sys.stdout)
        finally:
            if stream.progress is not None:
                stream.progress.close()
        stats = stream.stats
    # stdout is the flows' when they go there (the table, --json, --output -): then the
    # summary is not
    out = (sys.stderr if summary is None or any(c.file == STDOUT for c in config.collectors)
           else sys.stdout)
    print(format_summary(stats), file=out)
    if summary is not None:
        print(format_export_summary(summary), file=out)
    if stats.corrupt_records and not config.capture.skip_corrupt:
        raise CaptureError(corrupt_capture(args.file, stats))
    if summary is not None and summary.send_errors:
        out.flush()
        print(f"pyprobe: error: {summary.send_errors} of {summary.messages} messages could not "
              f"be sent (the log says why)", file=sys.stderr)
        return SEND_FAILED
    return 0


def corrupt_capture(path: str, stats: MeterStats) -> str:
    """The error of a capture file libpcap stopped reading at a corrupt record."""
    return (f"{path}: corrupt record {stats.corruption}: the {stats.corrupt_octets} octets from "
            f"there on were not read (--skip-corrupt reads on from the next sound record)")


def check(args: argparse.Namespace) -> int:
    """`pyprobe check`: the configuration, its templates, its collectors' addresses and what the
    capture needs, checked; the effective configuration."""
    config = load_config(args.config, overrides_of(args))
    collectors_of(config, ElementRegistry.default())
    check_capture(config)
    sys.stdout.write(to_yaml(config))
    return 0


def show_status(args: argparse.Namespace) -> int:
    """`pyprobe run --status`: a running sensor's counters, from its metrics endpoint: its
    statistics line, then each worker's, with what the line adds up."""
    overrides = overrides_of(args)
    listen = overrides.get("metrics.listen")
    if listen is None and args.config is not None:
        listen = load_config(args.config, overrides).metrics.listen
    if listen is None:
        raise PyprobeError("--status reads the sensor's metrics endpoint: give the -c FILE "
                           "that sets metrics.listen, or --metrics HOST:PORT")
    workers = status(listen)
    print(f"sensor at {listen}: {Counters.of(add_up(workers.values()))}")
    for index, samples in workers.items():
        print(f"worker {index}: {Counters.of(add_up([samples]))}")
        for line in details(samples):
            print(f"  {line}")
    return 0


def quiet_collector() -> None:
    """The meter's objects (flows, their directions, keys, packets) hold no reference cycles, so
    the cyclic garbage collector would mostly walk the live flows: it runs rarely, and never over
    what the start made (frozen, which also keeps forked workers' pages shared)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)


def command(args: argparse.Namespace) -> int:
    """Runs the command `args` name; its exit status."""
    if args.command == "collect":
        from .collect import run as collect
        return collect(args)
    if args.command == "run" and args.status:
        return show_status(args)
    if args.command == "run":
        return run(args.config, overrides_of(args))
    if args.command == "check":
        return check(args)
    return replay(args)


def softflowd_style(argv: Sequence[str]) -> list[str]:
    """A command line without a command, as softflowd's and nProbe's are, with its command:
    `replay` for one that reads a capture (`-r FILE`), else `run`."""
    if not argv or not argv[0].startswith("-") or argv[0] in ("-h", "--help", "--version"):
        return list(argv)
    reads = any(arg.startswith("-r") and not arg.startswith("--") for arg in argv)
    return ["replay" if reads else "run", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(softflowd_style(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_collector()
    try:
        status = command(args)
        sys.stdout.flush()  # what cannot be written fails here, not in the interpreter's exit
        return status
    except PyprobeError as error:
        print(f"pyprobe: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`| head`): nothing more to say
        _drop_output()
        return 0
    except OSError as error:
        if error.errno not in OUTPUT_ERRORS:
            raise
        print(f"pyprobe: error: cannot write the output: {error.strerror}", file=sys.stderr)
        _drop_output()
        return 2


OUTPUT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
"""Why a write to stdout fails on a full or broken device (/dev/full, a full disk)."""


def _drop_output() -> None:
    """Points stdout at /dev/null, so the interpreter's exit does not retry the failed write."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
