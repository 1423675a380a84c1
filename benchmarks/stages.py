"""Where the time goes per packet: each stage of the pipeline added in turn, CPU time per packet.

    .venv/bin/python benchmarks/stages.py [--repeat N] [--synth-packets N] [--instructions] [FILE ...]

Without FILE it measures the gen_synth.py capture of benchmarks/replay.py and
../shared/pcaps/bench/ndpi_merged_bench.pcap. Each row runs the pipeline up to one more stage
(read the file; decode; the flow cache; nDPI; IPFIX export of the nDPI template to a UDP socket
nobody reads) and shows the stage's own cost: the row's CPU time less the previous row's, per
packet, best of `--repeat` runs. The last row, export to ntopng instead (records encoded and
held for an ntopng that does not subscribe), is counted from the nDPI row as IPFIX export is.

CPU time on a shared VM moves by a third from run to run. `--instructions` counts instructions
instead (valgrind's callgrind, each stage in a process of its own, less one that only imports):
the same on every run, so it shows what a change saved. It is about 50 times slower: give it a
smaller synthetic capture (`--synth-packets 100000`).
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from replay import SHARED, run_once, synthetic_capture

from pyprobe.capture import PcapSource
from pyprobe.config import CollectorConfig
from pyprobe.decode import Decoder


def read(path: Path) -> None:
    for _ in PcapSource(str(path)):
        pass


def decode(path: Path) -> None:
    source = PcapSource(str(path))
    decode = Decoder(source.linktype).decode
    for ts_ns, frame in source:
        decode(ts_ns // 1_000_000, frame)


def meter(dpi: bool) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        run_once(path, None, dpi=dpi)
    return run


def export(path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # never read
        sink.bind(("127.0.0.1", 0))
        run_once(path, CollectorConfig(*sink.getsockname()), dpi=True, template="ndpi.yaml")


def export_to_ntopng(path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    run_once(path, CollectorConfig("127.0.0.1", port, protocol="zmq", linger=0), dpi=True)


# (name, what it runs, the row whose stages it adds one to: None for the previous row)
STAGES = (("read (pypcap)", read, None), ("decode", decode, None),
          ("flow cache", meter(False), None), ("nDPI", meter(True), None),
          ("IPFIX export (ndpi.yaml)", export, None),
          ("ntopng export (zmq)", export_to_ntopng, 3))


def cpu_seconds(run: Callable[[Path], None], path: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run(path)
        best = min(best, time.process_time() - started)
    return best


def instructions(stage: int, path: Path) -> int:
    """The instructions a process running STAGES[stage] on `path` executes (-1: imports only)."""
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           sys.executable, __file__, "--run-stage", str(stage), str(path)],
                          capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", done.stderr)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions (valgrind) instead of CPU time")
    parser.add_argument("--run-stage", type=int, help=argparse.SUPPRESS)  # one run, for valgrind
    args = parser.parse_args()
    if args.run_stage is not None:
        if args.run_stage >= 0:
            STAGES[args.run_stage][1](args.files[0])
        return
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    for path in files:
        if not path.exists():
            print(f"{path.name}: absent, skipped")
            continue
        packets = sum(1 for _ in PcapSource(str(path)))
        if args.instructions:
            imports = instructions(-1, path)
            totals = [instructions(stage, path) - imports for stage in range(len(STAGES))]
            unit, per_packet, digits = "instr/packet", 1, 0
        else:
            totals = [cpu_seconds(run, path, args.repeat) for _, run, _ in STAGES]
            unit, per_packet, digits = "us/packet", 1e6, 2
        print(f"\n{path.name}: {packets:,} packets\n{'stage':<26} {unit:>12} {'share':>6} "
              f"{'cumulative pkt/s' if not args.instructions else 'cumulative':>16}")
        previous = 0
        for (name, _, base), total in zip(STAGES, totals):
            before = previous if base is None else totals[base]
            own = max(total - before, 0)
            previous = max(previous, total)
            cumulative = (f"{total / packets:>16,.0f}" if args.instructions
                          else f"{packets / total:>16,.0f}")
            print(f"{name:<26} {own / packets * per_packet:>12,.{digits}f} {own / max(totals):>6.0%} "
                  f"{cumulative}")


if __name__ == "__main__":
    main()
