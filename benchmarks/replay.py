"""Replay benchmark: packets/s of the meter alone and with IPFIX export, on synthetic and real captures.

    .venv/bin/python benchmarks/replay.py [--repeat N] [--synth-packets N] [--dpi] [FILE ...]

Without FILE it measures a gen_synth.py capture (made once, kept in benchmarks/.cache/) and
../shared/pcaps/bench/ndpi_merged_bench.pcap. Export goes to a local UDP socket that is never
read (the kernel drops what overflows). Each row is the median of the runs; DPI is off.

With --syn-storm N, a third: resident memory per active flow over N single-SYN flows (each its
own 5-tuple), every one live at once up to the cache's bound, nDPI off and on (on, every buffer
is still live: a lone SYN never classifies), and what the bound did: the flows that ended as
lack of resources (reason 5) and the most flows live at once. Then the storm mode: packets/s
of `pyprobe replay` (nDPI on with its default budget of new flows, IPFIX export of the nDPI
template) on the storm beside its normal rate, the same on ndpi_merged_bench.pcap, median of
--repeat runs, alternated.

With --outputs, a table of packets/s with each kind of output (nDPI off, the default template):
UDP as above, IPFIX over TCP to a local reader, an IPFIX file and a JSON lines file.

With --dpi, a second table: the meter with nDPI on (packets/s, and as a share of the meter
alone), packets handed to nDPI per flow, flows that took nDPI's guess, and resident memory per
active flow with nDPI on and off: the growth of RSS from before a run to the moment the last
packet has been metered, with timeouts so long that every flow of the capture is still live.
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

from pyprobe import FlowStream
from pyprobe.flow import EndReason
from pyprobe.config import CollectorConfig
from pyprobe.export.elements import ElementRegistry
from pyprobe.probe import Collector, Probe
from pyprobe.export.template import TEMPLATES, load_templates

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


def syn_storm_capture(flows: int) -> Path:
    """`flows` TCP SYNs 1 us apart, each from its own address to 10.255.0.1:80, made once."""
    path = CACHE / f"syn_storm_{flows}.pcap"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        frame = bytearray(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=dpkt.ip.IP(
            src=bytes(4), dst=bytes((10, 255, 0, 1)), p=dpkt.ip.IP_PROTO_TCP,
            data=dpkt.tcp.TCP(sport=40000, dport=80, flags=dpkt.tcp.TH_SYN)))))
        with path.open("wb") as file:
            writer = dpkt.pcap.Writer(file)
            for index in range(flows):
                struct.pack_into("!I", frame, 26, 0x0A000000 + index)  # source 10.x.y.z
                writer.writepkt(bytes(frame), ts=1_700_000_000 + index * 1e-6)
    return path


def run_once(path: Path, sink: CollectorConfig | None, dpi: bool = False,
             template: str | None = "default.yaml") -> tuple[int, int, float, FlowStream]:
    """(packets, flows, seconds, the stream) of one full replay, exported to `sink` when given:
    IPFIX or NetFlow v9 with the built-in template `template`; to ntopng (zmq: sink is the endpoint the
    probe binds, which nobody subscribes to: the messages are encoded and held), or JSON lines,
    with none."""
    stream = FlowStream(str(path), dpi=dpi)
    started = time.perf_counter()
    if sink is None:
        flows = sum(1 for _ in stream)
    else:
        registry = ElementRegistry.default()
        templates = (load_templates(TEMPLATES / template, registry)
                     if sink.protocol in ("ipfix", "netflow9") else None)
        flows = Probe(stream, [Collector(sink, templates)], registry).run().flows
    return stream.stats.packets_read, flows, time.perf_counter() - started, stream


READER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
while True:
    connection, _ = server.accept()
    while connection.recv(1 << 20):
        pass
    connection.close()
"""


def tcp_sink() -> subprocess.Popen:
    """A process that reads and discards the connections to its port (its first line)."""
    return subprocess.Popen([sys.executable, "-c", READER], stdout=subprocess.PIPE, text=True)


def outputs_rows(path: Path, sink: tuple[str, int], repeat: int) -> list[str]:
    """The --outputs table's rows for one capture: packets/s of the meter (nDPI off) exporting
    the default template over UDP (to a socket never read), over TCP (to a reader process), into an
    IPFIX file, and as JSON lines, median of `repeat` runs, alternated."""
    reader = tcp_sink()
    port = int(reader.stdout.readline())
    with tempfile.TemporaryDirectory(prefix="pyprobe-bench-") as folder:
        outputs = {"UDP": CollectorConfig(*sink),
                   "TCP": CollectorConfig("127.0.0.1", port, transport="tcp"),
                   "IPFIX file": CollectorConfig(file=f"{folder}/flows.ipfix"),
                   "JSON lines file": CollectorConfig(file=f"{folder}/flows.jsonl")}
        seconds: dict[str, list[float]] = {name: [] for name in outputs}
        for _ in range(repeat):
            for name, config in outputs.items():
                packets, _, took, _ = run_once(path, config)
                seconds[name].append(took)
    reader.kill()
    udp = statistics.median(seconds["UDP"])
    return [f"{path.name:<28} {name:<16} {packets / statistics.median(times):>12,.0f} "
            f"{udp / statistics.median(times):>7.0%}" for name, times in seconds.items()]


def resident_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4


class FirstExpiry:
    """A plugin that notes the resident memory and live flows when the first flow expires."""

    def __init__(self, stream: FlowStream) -> None:
        self.stream, self.kib, self.flows = stream, 0, 0

    def on_init(self, packet: object, flow: object) -> None:
        pass

    def on_update(self, packet: object, flow: object) -> None:
        pass

    def on_expire(self, flow: object) -> None:
        if not self.kib:
            self.kib, self.flows = resident_kib(), self.stream.live_flows + 1


def kib_per_flow(path: Path, dpi: bool) -> float:
    """Resident memory per active flow: every flow of `path` live at once (no timeout fires).

    Run it in a fresh process: memory freed by earlier runs stays resident and would be reused.
    """
    stream = FlowStream(str(path), dpi=dpi, idle_timeout=1e9, active_timeout=1e9, close_linger=1e9,
                        flow_budget=0)  # nDPI on every flow, storm or not
    probe = FirstExpiry(stream)
    stream.plugins += (probe,)
    before = resident_kib()
    for _ in stream.batches():
        pass
    return (probe.kib - before) / probe.flows


class MostLive(FirstExpiry):
    """A plugin that notes the most flows live at once, as each one expires."""

    def on_expire(self, flow: object) -> None:
        self.flows = max(self.flows, self.stream.live_flows + 1)


def storm_row(flows: int) -> str:
    """The --syn-storm line: KiB per active flow off and on, and what the cache bound did."""
    path = syn_storm_capture(flows)
    stream = FlowStream(str(path), idle_timeout=1e9, active_timeout=1e9, dpi=False)
    live = MostLive(stream)
    stream.plugins += (live,)
    for _ in stream.batches():
        pass
    most = live.flows
    return (f"SYN storm, {flows:,} flows: {fresh_kib_per_flow(path, False):.2f} KiB/flow with nDPI "
            f"off, {fresh_kib_per_flow(path, True):.2f} on (buffers live); max_flows "
            f"{stream.max_flows:,}: {stream.stats.flows[EndReason.LACK_OF_RESOURCES]:,} flows "
            f"ended for lack of resources, at most {most:,} live")


def storm_rate_row(flows: int, sink: tuple[str, int], repeat: int) -> str:
    """The --syn-storm rate line: `pyprobe replay` (nDPI on, IPFIX of the nDPI template to the
    sink, the command's own garbage collector settings) on the storm, as a share of its rate on
    the bench capture; packets/s as the replay's summary gives them, median of `repeat`."""
    storm, normal = syn_storm_capture(flows), SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"
    rates: dict[Path, list[float]] = {storm: [], normal: []}
    skipped = "0"
    for _ in range(repeat):
        for path in rates:
            out = subprocess.run([sys.executable, "-m", "pyprobe", "replay", str(path),
                                  "--collector", f"{sink[0]}:{sink[1]}"], check=True,
                                 capture_output=True, text=True).stdout
            rates[path].append(float(re.search(r" s, (\d+) packets/s", out)[1]))
            skipped = re.search(r"not inspected by nDPI .*: (\d+)", out)[1] if path == storm else skipped
    storm_rate, normal_rate = (statistics.median(rates[p]) for p in (storm, normal))
    return (f"SYN storm, {flows:,} flows, pyprobe replay with nDPI and IPFIX export: "
            f"{storm_rate:,.0f} packets/s ({int(skipped):,} flows past nDPI's budget); "
            f"{normal.name}: {normal_rate:,.0f} packets/s; the storm at "
            f"{storm_rate / normal_rate:.0%} of it")


def dpi_row(path: Path, runs: list[tuple[int, int, float, FlowStream]], meter_s: float) -> str:
    """The --dpi table's row for one capture, from its runs with nDPI on."""
    packets, flows, _, stream = runs[0]
    classifier = stream.classifier
    seconds = statistics.median(r[2] for r in runs)
    return (f"{path.name:<28} {packets / seconds:>12,.0f} {meter_s / seconds:>8.0%} "
            f"{classifier.packets / classifier.flows:>10.2f} {classifier.giveups / flows:>8.1%} "
            f"{fresh_kib_per_flow(path, True):>10.2f} {fresh_kib_per_flow(path, False):>11.2f}")


def fresh_kib_per_flow(path: Path, dpi: bool) -> float:
    """kib_per_flow in a new process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(kib_per_flow, (path, dpi))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synth-packets", type=int, default=1_000_000)
    parser.add_argument("--dpi", action="store_true", help="also measure the meter with nDPI on")
    parser.add_argument("--outputs", action="store_true",
                        help="also measure each kind of output: UDP, TCP, IPFIX and JSON files")
    parser.add_argument("--syn-storm", type=int, metavar="N",
                        help="also measure memory per flow over N single-SYN flows, and the "
                             "probe's rate on them beside its normal one")
    args = parser.parse_args()
    files = args.files or [synthetic_capture(args.synth_packets),
                           SHARED / "pcaps" / "bench" / "ndpi_merged_bench.pcap"]
    sink_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_socket.bind(("127.0.0.1", 0))
    sink = sink_socket.getsockname()
    print(f"{'capture':<28} {'packets':>9} {'flows':>8} {'meter pkt/s':>12} {'+IPFIX pkt/s':>13} "
          f"{'export cost':>11} {'flows/s':>8}")
    dpi_rows, output_rows = [], []
    for path in files:
        if not path.exists():
            print(f"{path.name:<28} absent, skipped")
            continue
        meter, export, dpi = [], [], []
        for _ in range(args.repeat):  # alternate, so all see the same machine load
            meter.append(run_once(path, None))
            export.append(run_once(path, CollectorConfig(*sink)))
            if args.dpi:
                dpi.append(run_once(path, None, dpi=True))
        packets, flows, _, _ = meter[0]
        meter_s = statistics.median(r[2] for r in meter)
        export_s = statistics.median(r[2] for r in export)
        print(f"{path.name:<28} {packets:>9} {flows:>8} {packets / meter_s:>12,.0f} "
              f"{packets / export_s:>13,.0f} {export_s / meter_s - 1:>11.1%} {flows / meter_s:>8,.0f}")
        if args.dpi:
            dpi_rows.append(dpi_row(path, dpi, meter_s))
        if args.outputs:
            output_rows += outputs_rows(path, sink, args.repeat)
    if dpi_rows:
        print(f"\n{'capture':<28} {'nDPI pkt/s':>12} {'of meter':>8} {'nDPI pkt/flow':>10} "
              f"{'giveups':>8} {'KiB/flow on':>10} {'KiB/flow off':>11}")
        print("\n".join(dpi_rows))
    if output_rows:
        print(f"\n{'capture':<28} {'output':<16} {'pkt/s':>12} {'of UDP':>7}")
        print("\n".join(output_rows))
    if args.syn_storm:
        print(f"\n{storm_row(args.syn_storm)}")
        print(storm_rate_row(args.syn_storm, sink, args.repeat))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
