"""Replay benchmark: packets/s of the meter alone and with IPFIX export, on synthetic and real captures.

    .venv/bin/python benchmarks/replay.py [--repeat N] [--synth-packets N] [FILE ...]

Without FILE it measures a gen_synth.py capture (made once, kept in benchmarks/.cache/) and
../shared/pcaps/bench/ndpi_merged_bench.pcap. Export goes to a local UDP socket that is never
read (the kernel drops what overflows). Each row is the median of the runs; DPI is off.
"""
from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyprobe import FlowStream
from pyprobe.elements import ElementRegistry
from pyprobe.probe import Collector, Probe
from pyprobe.template import load_templates

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CACHE = Path(__file__).resolve().parent / ".cache"


def synthetic_capture(packets: int) -> Path:
    """A gen_synth.py capture of about `packets` packets in packets/10 flows, made once."""
    path = CACHE / f"synth_{packets}.pcap"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        print(f"making {path} with gen_synth.py (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, str(SHARED / "tools" / "gen_synth.py"), "--packets",
                        str(packets), "--flows", str(packets // 10), str(path)], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def run_once(path: Path, sink: tuple[str, int] | None) -> tuple[int, int, float]:
    """(packets, flows, seconds) of one full replay, exported to `sink` when given."""
    stream = FlowStream(str(path), dpi=False)
    started = time.perf_counter()
    if sink is None:
        flows = sum(1 for _ in stream)
    else:
        registry = ElementRegistry.default()
        templates = load_templates(ROOT / "templates" / "default.yaml", registry)
        flows = Probe(stream, [Collector(*sink, "ipfix", templates)], registry).run().flows
    return stream.stats.packets_read, flows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    args = parser.parse_args()
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    sink_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_socket.bind(("127.0.0.1", 0))
    sink = sink_socket.getsockname()
    print(f"{'capture':<28} {'packets':>9} {'flows':>8} {'meter pkt/s':>12} {'+IPFIX pkt/s':>13} "
          f"{'export cost':>11} {'flows/s':>8}")
    for path in files:
        if not path.exists():
            print(f"{path.name:<28} absent, skipped")
            continue
        meter, export = [], []
        for _ in range(args.repeat):  # alternate, so both see the same machine load
            meter.append(run_once(path, None))
            export.append(run_once(path, sink))
        packets, flows, _ = meter[0]
        meter_s = statistics.median(r[2] for r in meter)
        export_s = statistics.median(r[2] for r in export)
        print(f"{path.name:<28} {packets:>9} {flows:>8} {packets / meter_s:>12,.0f} "
              f"{packets / export_s:>13,.0f} {export_s / meter_s - 1:>11.1%} {flows / meter_s:>8,.0f}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
