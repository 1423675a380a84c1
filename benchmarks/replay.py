"""Replay benchmark: packets/s of the meter (FlowStream) on a synthetic and a real capture.

    .venv/bin/python benchmarks/replay.py [--repeat N] [--synth-packets N] [FILE ...]

Without FILE it measures a gen_synth.py capture (made once, kept in benchmarks/.cache/) and
../shared/pcaps/bench/ndpi_merged_bench.pcap. It prints one row per input: the median of the runs.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyprobe import FlowStream

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


def run_once(path: Path) -> tuple[int, int, float]:
    """(packets, flows, seconds) of one full replay with DPI off."""
    stream = FlowStream(str(path), dpi=False)
    started = time.perf_counter()
    flows = sum(1 for _ in stream)
    return stream.stats.packets_read, flows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    args = parser.parse_args()
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    print(f"{'capture':<32} {'packets':>9} {'flows':>8} {'seconds':>8} {'packets/s':>10} {'flows/s':>8}")
    for path in files:
        if not path.exists():
            print(f"{path.name:<32} absent, skipped")
            continue
        runs = [run_once(path) for _ in range(args.repeat)]
        packets, flows, _ = runs[0]
        seconds = statistics.median(r[2] for r in runs)
        print(f"{path.name:<32} {packets:>9} {flows:>8} {seconds:>8.2f} {packets / seconds:>10,.0f} "
              f"{flows / seconds:>8,.0f}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
