"""Side-by-side replay speed: pyprobe (nDPI on and off) against nfstream 6.6.0, ndpiReader and
softflowd.

    .venv/bin/python benchmarks/compare.py [--repeat N] [--synth-packets N] [FILE ...]

Without FILE it measures a 1M-packet gen_synth.py capture (made once into benchmarks/.cache/) and
../shared/pcaps/bench/ndpi_merged_bench.pcap. Each tool runs in its own process, alternating, and
each row is the median of `--repeat` runs:

- pyprobe: `pyprobe replay FILE --collector 127.0.0.1:PORT` (IPFIX) into a UDP sink, timed inside
  the process from the command's start (its imports excluded, nDPI's library among them, as
  nfstream's import loads it) to its last datagram;
- nfstream: `NFStreamer(source=FILE, statistical_analysis=False)` iterated to the end, timed the
  same way, from its own venv (benchmarks/.venv-nfstream, made once with pip);
- ndpiReader: nDPI's own C reader, one thread (`../shared/tools/ndpiReader -i FILE -n 1`), at
  the "nDPI throughput" it reports (its reading and classifying, without its start-up);
- softflowd: `softflowd -r FILE -n 127.0.0.1:PORT -v 10 -d -m 524288` (IPFIX, no DPI), timed
  from outside (a C program's start-up is a few ms).

Peak RSS is the process's (nfstream's meter processes are its children: the largest is counted).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from replay import SHARED, synthetic_capture

HERE = Path(__file__).resolve().parent
NDPI_READER = SHARED / "tools" / "ndpiReader"
ROOT = HERE.parent
NFSTREAM_VENV = HERE / ".venv-nfstream"
MAX_FLOWS = 524_288

# Each runner prints {"packets": ..., "flows": ..., "seconds": ...} as its last line.
PYPROBE_RUNNER = """
import contextlib, io, json, sys, time
from pyprobe.cli import main
import pyprobe.classify  # loads nDPI's library, as `from nfstream import NFStreamer` does
started = time.perf_counter()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(sys.argv[1:])
seconds = time.perf_counter() - started
text = out.getvalue()
packets = int(text.split("packets read ")[1].split(",")[0])
flows = int(text.split("exported ")[1].split(" flows")[0])
print(json.dumps({"packets": packets, "flows": flows, "seconds": seconds}))
"""
NFSTREAM_RUNNER = """
import json, sys, time
from nfstream import NFStreamer
started = time.perf_counter()
packets = flows = 0
for flow in NFStreamer(source=sys.argv[1], statistical_analysis=False):
    flows += 1
    packets += flow.bidirectional_packets
seconds = time.perf_counter() - started
print(json.dumps({"packets": packets, "flows": flows, "seconds": seconds}))
"""


class Run(NamedTuple):
    """One tool's replay of one capture."""

    packets: int
    flows: int
    seconds: float
    peak_rss_kib: int


def nfstream_python() -> Path:
    """The python of nfstream's own venv, made once (nfstream and pandas stay out of .venv)."""
    python = NFSTREAM_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {NFSTREAM_VENV} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(NFSTREAM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nfstream==6.6.0"], check=True)
    return python


def run_tool(tool: str, path: Path, sink: tuple[str, int]) -> Run:
    """Runs one tool over `path`, exporting to `sink` where it exports."""
    collector = f"{sink[0]}:{sink[1]}"
    if tool == "softflowd":
        # Its pid file and control socket go in a folder of their own, by short relative
        # names: softflowd 1.1.0 never reads the capture when the socket's path is long.
        with tempfile.TemporaryDirectory() as folder:
            command = ["softflowd", "-r", str(path.resolve()), "-n", collector, "-v", "10", "-d",
                       "-m", str(MAX_FLOWS), "-p", "pid", "-c", "ctl"]
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, cwd=folder)
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
        if status:
            raise RuntimeError(f"softflowd failed: {output.strip()[-500:]}")
        flows = int(re.search(r"Flows exported: (\d+)", output).group(1))
        packets = sum(int(n) for n in re.findall(r"^\s+\w+ \(\d+\):\s+\d+\s+(\d+)", output, re.M))
        return Run(packets, flows, seconds, usage.ru_maxrss)
    if tool == "ndpiReader":
        process = subprocess.Popen([str(NDPI_READER), "-i", str(path), "-n", "1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if status:
            raise RuntimeError(f"ndpiReader failed: {output.strip()[-500:]}")
        rate, unit = re.search(r"nDPI throughput:\s+([\d.]+) ([KM]?) ?pps", output).groups()
        packets = int(re.search(r"of (\d+) packets total", output).group(1))
        flows = int(re.search(r"Unique flows:\s+(\d+)", output).group(1))
        pps = float(rate) * {"": 1, "K": 1e3, "M": 1e6}[unit]
        return Run(packets, flows, packets / pps, usage.ru_maxrss)
    if tool == "nfstream":
        command = [str(nfstream_python()), "-c", NFSTREAM_RUNNER, str(path)]
    else:
        command = [str(ROOT / ".venv" / "bin" / "python"), "-c", PYPROBE_RUNNER, "replay",
                   str(path), "--collector", collector]
        command += TOOL_FLAGS[tool]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise RuntimeError(f"{tool} failed: {stderr.strip()[-800:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return Run(result["packets"], result["flows"], result["seconds"], usage.ru_maxrss)


TOOL_FLAGS = {"pyprobe": [], "pyprobe (no DPI)": ["--no-dpi"],
              "pyprobe (2 workers)": ["--workers", "2"]}
TOOLS = (*TOOL_FLAGS, "nfstream", "ndpiReader", "softflowd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated subset of: {', '.join(TOOLS)}")
    args = parser.parse_args()
    tools = [t.strip() for t in args.tools.split(",")]
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    sink_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never read: the kernel drops
    sink_socket.bind(("127.0.0.1", 0))
    sink = sink_socket.getsockname()
    print(f"{'capture':<28} {'tool':<19} {'packets':>9} {'flows':>8} {'packets/s':>10} "
          f"{'flows/s':>9} {'peak RSS':>9} {'vs nfstream':>11} {'vs ndpiReader':>13}")
    for path in files:
        if not path.exists():
            print(f"{path.name:<28} absent, skipped")
            continue
        runs: dict[str, list[Run]] = {tool: [] for tool in tools}
        for _ in range(args.repeat):  # alternate, so every tool sees the same machine load
            for tool in tools:
                runs[tool].append(run_tool(tool, path, sink))
        rates = {tool: statistics.median(r.packets / r.seconds for r in rs)
                 for tool, rs in runs.items()}
        for tool, rs in runs.items():
            seconds = statistics.median(r.seconds for r in rs)
            ratios = [f"{rates[tool] / rates[other]:.2f}x" if other in rates else "-"
                      for other in ("nfstream", "ndpiReader")]
            print(f"{path.name:<28} {tool:<19} {rs[0].packets:>9} {rs[0].flows:>8} "
                  f"{rates[tool]:>10,.0f} {rs[0].flows / seconds:>9,.0f} "
                  f"{max(r.peak_rss_kib for r in rs) / 1024:>6.0f} MiB {ratios[0]:>11} "
                  f"{ratios[1]:>13}", flush=True)


if __name__ == "__main__":
    main()
