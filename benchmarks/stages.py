"""Where the time goes per packet: each stage of the pipeline added in turn, CPU time per packet.

    .venv/bin/python benchmarks/stages.py [--repeat N] [--synth-packets N] [FILE ...]

Without FILE it measures the gen_synth.py capture of benchmarks/replay.py and
../shared/pcaps/bench/ndpi_merged_bench.pcap. Each row runs the pipeline up to one more stage
(read the file; decode; the flow cache; nDPI; IPFIX export of the nDPI template to a UDP socket
nobody reads) and shows the stage's own cost: the row's CPU time less the previous row's, per
packet, best of `--repeat` runs (this VM's wall clock is too noisy for differences).
"""
from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from pathlib import Path

from replay import SHARED, run_once, synthetic_capture

from pyprobe.capture import PcapSource
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
        run_once(path, sink.getsockname(), dpi=True, template="ndpi.yaml")


STAGES = (("read (pypcap)", read), ("decode", decode), ("flow cache", meter(False)),
          ("nDPI", meter(True)), ("IPFIX export (ndpi.yaml)", export))


def cpu_seconds(run: Callable[[Path], None], path: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run(path)
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    args = parser.parse_args()
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    for path in files:
        if not path.exists():
            print(f"{path.name}: absent, skipped")
            continue
        packets = sum(1 for _ in PcapSource(str(path)))
        print(f"\n{path.name}: {packets:,} packets\n{'stage':<26} {'us/packet':>9} {'share':>6} "
              f"{'cumulative pkt/s':>16}")
        rows, previous = [], 0.0
        for name, run in STAGES:
            total = cpu_seconds(run, path, args.repeat)
            rows.append((name, max(total - previous, 0.0), total))
            previous = max(previous, total)
        for name, own, total in rows:
            print(f"{name:<26} {own / packets * 1e6:>9.2f} {own / previous:>6.0%} "
                  f"{packets / total:>16,.0f}")


if __name__ == "__main__":
    main()
