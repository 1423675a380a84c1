"""Live capture: the highest packet rate each probe meters without losing a packet.

    .venv/bin/python benchmarks/live.py [--rates 20000,50000,...] [--seconds 30] [--capture FILE]
                                        [--probes NAME,...] [--flags "--buffer-size N"] [--root DIR]

In a network namespace of its own: a veth pair (`va` captured, `vb` sent into; MTU 9000, for the
synthetic capture's largest frames) and nfcapd on the namespace's loopback. For each probe and
each rate, lowest first, tcpreplay plays the capture into `vb`, looped for at least --seconds
(`--preload-pcap --timer=nano`, in bursts of rate/1000 packets every millisecond), then 2,000
small packets of another flow (softflowd keeps its last ring block until more traffic comes).
The probe is then stopped (SIGTERM; `softflowctl shutdown`), and the rate is lossless when the
capture dropped nothing (kernel and interface counters) and nfcapd holds exactly the packets and
octets of the loops played. A probe's first lossy rate ends its series.

Probes: pyprobe with its defaults (nDPI, one worker per CPU, a 64 MiB ring per worker), and with
nDPI off and/or one worker; softflowd 1.1.0 (`-v 10 -m 524288 -B 67108864`: IPFIX, the flows
pyprobe keeps, the same ring). Each pyprobe row also gives the offline rate of that
configuration, `pyprobe replay` of the capture exporting to a local sink (median of 3), and the
live rate as a share of it. Each trial also prints the sender's own cost (tcpreplay's CPU time
over the time it sent) and the probe's CPU time a packet (its workers' included, start to end),
which a busy machine changes much less than the rates: the table gives the lowest of a probe's
trials beside its offline replay's. --flags adds pyprobe flags to every pyprobe probe (to measure a
setting); --root runs another pyprobe tree (an earlier commit, `git archive`d) with this venv.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import dpkt

from replay import CACHE, synthetic_capture

ROOT = Path(__file__).resolve().parent.parent
PORT = 2055
FLUSH_PACKETS = 2_000
FLUSH_SOURCE = "192.0.2.250"  # the flush flow's address, left out of nfcapd's totals
CPUS = len(os.sched_getaffinity(0))


class Probe(NamedTuple):
    """A probe to run on `va`: its name (for --probes), what it is, and pyprobe's flags (None:
    softflowd)."""

    name: str
    label: str
    flags: tuple[str, ...] | None


PROBES = [Probe("pyprobe", f"pyprobe: defaults (nDPI, {CPUS} workers)", ()),
          Probe("pyprobe-1", "pyprobe: nDPI, 1 worker", ("--workers", "1")),
          Probe("pyprobe-nodpi", f"pyprobe: no DPI, {CPUS} workers", ("--no-dpi",)),
          Probe("pyprobe-nodpi-1", "pyprobe: no DPI, 1 worker", ("--no-dpi", "--workers", "1")),
          Probe("softflowd", "softflowd", None)]


class Truth(NamedTuple):
    """What one loop of a capture sends: frames, and the IP packets and octets among them."""

    frames: int
    packets: int
    octets: int


class Trial(NamedTuple):
    """One probe at one rate: what it got, and the CPU time it and the sender took."""

    sent: int
    dropped: int
    packets: int
    octets: int
    expected: Truth
    collector_drops: int
    """Datagrams nfcapd's socket dropped."""
    sender_cpu: float
    """tcpreplay's CPU time over the time it sent (1: a whole CPU)."""
    probe_cpu_s: float
    """The probe's CPU time, its workers' included, from its start to its end."""

    @property
    def cost(self) -> float:
        """The probe's CPU seconds a packet it metered."""
        return self.probe_cpu_s / max(self.packets, 1)

    @property
    def lossless(self) -> bool:
        return not self.dropped and (self.packets, self.octets) == self.expected[1:]


def truth(path: Path) -> Truth:
    """Frames, IP packets and their octets (IP total length, as nfdump counts) of a capture."""
    frames = packets = octets = 0
    with path.open("rb") as file:
        for _, frame in dpkt.pcap.Reader(file):
            frames += 1
            ethertype, offset = struct.unpack_from("!H", frame, 12)[0], 14
            while ethertype in (0x8100, 0x88A8):
                ethertype, offset = struct.unpack_from("!H", frame, offset + 2)[0], offset + 4
            if ethertype == 0x0800:
                packets, octets = packets + 1, octets + struct.unpack_from("!H", frame, offset + 2)[0]
            elif ethertype == 0x86DD:
                packets, octets = packets + 1, octets + 40 + struct.unpack_from("!H", frame, offset + 4)[0]
    return Truth(frames, packets, octets)


def flush_capture() -> Path:
    """FLUSH_PACKETS small UDP packets of one flow, made once."""
    path = CACHE / "flush.pcap"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        udp = dpkt.udp.UDP(sport=9, dport=9, data=bytes(18))
        udp.ulen = len(bytes(udp))
        ip = dpkt.ip.IP(src=socket.inet_aton(FLUSH_SOURCE), dst=socket.inet_aton("192.0.2.251"),
                        p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" + bytes(5), dst=b"\x02" + bytes(4) + b"\x01",
                                             type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
        with path.open("wb") as file:
            writer = dpkt.pcap.Writer(file)
            for index in range(FLUSH_PACKETS):
                writer.writepkt(frame, ts=1_700_000_000 + index / 1000)
    return path


class Namespace:
    """A network namespace with the veth pair va - vb and its loopback; removed on exit."""

    def __init__(self) -> None:
        self.name = f"pyprobe-live-{os.getpid()}"

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1")  # no router solicitations on the veths
        self.run("ip", "link", "add", "va", "mtu", "9000", "type", "veth", "peer", "name", "vb",
                 "mtu", "9000")
        for link in ("lo", "va", "vb"):
            self.run("ip", "link", "set", link, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=True)

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True,
                              text=True).stdout

    def sent_frames(self) -> int:
        link = json.loads(self.run("ip", "-s", "-j", "link", "show", "vb"))[0]
        return link["stats64"]["tx"]["packets"]


def until(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.05)


@contextlib.contextmanager
def nfcapd(netns: Namespace, folder: Path) -> Iterator[dict[str, int]]:
    """nfcapd on the namespace's 127.0.0.1:PORT; once stopped, the packets and octets it holds
    without the flush flow's, and the datagrams its socket dropped (its buffer full: 8 MiB where
    net.core.rmem_max is 4 MiB)."""
    (folder / "flows").mkdir()
    process = subprocess.Popen(netns.command("nfcapd", "-B", str(32 << 20), "-b", "127.0.0.1",
                                             "-p", str(PORT), "-w", str(folder / "flows")),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: netns.run("ss", "-Huln", f"sport = :{PORT}").strip(), "nfcapd did not bind")
    totals: dict[str, int] = {}
    try:
        yield totals
    finally:
        until(lambda: netns.run("ss", "-Huln", f"sport = :{PORT}").split()[1] == "0",
              "nfcapd did not drain its socket")
        memory = netns.run("ss", "-Huanm", f"sport = :{PORT}")
        totals["collector_drops"] = int(re.search(r"\bd(\d+)\)", memory)[1])
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    out = subprocess.run(["nfdump", "-R", str(folder / "flows"), "-q", "-N", "-o",
                          "fmt:%pkt|%byt", f"not host {FLUSH_SOURCE}"],
                         check=True, capture_output=True, text=True).stdout
    rows = [line.split("|") for line in out.splitlines()]
    totals["packets"] = sum(int(packets) for packets, _ in rows)
    totals["octets"] = sum(int(octets) for _, octets in rows)


class Running:
    """A probe capturing on va, until `stop()`: which returns the frames it dropped and the CPU
    time it took."""

    def __init__(self, netns: Namespace, probe: Probe, folder: Path, root: Path,
                 extra: tuple[str, ...]) -> None:
        self.netns, self.probe, self.folder = netns, probe, folder
        self.log = folder / "probe.log"
        with self.log.open("wb") as out:
            if probe.flags is None:
                self.process = subprocess.Popen(netns.command(
                    "softflowd", "-i", "va", "-n", f"127.0.0.1:{PORT}", "-v", "10", "-d", "-m",
                    "524288", "-B", str(64 << 20), "-p", "pid", "-c", "ctl"),
                    stdout=out, stderr=subprocess.STDOUT, cwd=folder)  # short socket path
                until(lambda: (folder / "ctl").exists(), "softflowd did not start")
            else:
                self.process = subprocess.Popen(netns.command(
                    sys.executable, "-m", "pyprobe", "run", "--interface", "va", "--collector",
                    f"127.0.0.1:{PORT}", *probe.flags, *extra), stdout=out,
                    stderr=subprocess.STDOUT, cwd=root)
                until(lambda: "INFO started: " in self.log.read_text(), "pyprobe did not start")

    def stop(self) -> tuple[int, float]:
        if self.probe.flags is None:
            statistics_ = self.netns.run("softflowctl", "-c", str(self.folder / "ctl"),
                                         "statistics")
            dropped = sum(int(n) for n in re.findall(r"dropped by \w+: (\d+)", statistics_))
            self.netns.run("softflowctl", "-c", str(self.folder / "ctl"), "shutdown")
            return dropped, cpu_s(self.process)
        self.process.send_signal(signal.SIGTERM)
        cpu = cpu_s(self.process)
        stopped = re.search(r"INFO stopped: .* dropped (\d+) by the kernel and (\d+) by the "
                            r"interface", self.log.read_text())
        if stopped is None:
            raise RuntimeError(f"pyprobe failed: {self.log.read_text()[-1000:]}")
        return int(stopped[1]) + int(stopped[2]), cpu


def cpu_s(process: subprocess.Popen) -> float:
    """Waits for `process`; the CPU time it and the children it waited for took."""
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped here: Popen must not wait for it again
    return usage.ru_utime + usage.ru_stime


def trial(netns: Namespace, probe: Probe, capture: Path, loop: Truth, rate: int,
          seconds: float, root: Path, extra: tuple[str, ...]) -> Trial:
    """Plays the capture at `rate` packets/s for at least `seconds` while `probe` captures."""
    loops = math.ceil(rate * seconds / loop.frames)
    with tempfile.TemporaryDirectory(prefix="pyprobe-live-") as name:
        folder = Path(name)
        with nfcapd(netns, folder) as totals:
            running = Running(netns, probe, folder, root, extra)
            before = netns.sent_frames()
            started = time.monotonic()
            sender = subprocess.Popen(netns.command(
                "tcpreplay", "-q", "--preload-pcap", "--timer=nano", "--pps", str(rate),
                "--pps-multi", str(max(1, rate // 1000)), "--loop", str(loops), "-i", "vb",
                str(capture)), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            sender_cpu = cpu_s(sender) / (time.monotonic() - started)
            subprocess.run(netns.command("tcpreplay", "-q", "--pps", "10000", "-i", "vb",
                                         str(flush_capture())), check=True,
                           capture_output=True)
            sent = netns.sent_frames() - before - FLUSH_PACKETS
            time.sleep(1)
            dropped, probe_cpu_s = running.stop()
        return Trial(sent, dropped, totals["packets"], totals["octets"],
                     Truth(loop.frames * loops, loop.packets * loops, loop.octets * loops),
                     totals["collector_drops"], sender_cpu, probe_cpu_s)


def replay(capture: Path, flags: tuple[str, ...], repeat: int, root: Path
           ) -> tuple[float, float]:
    """Median packets/s of `pyprobe replay` with the probe's flags, exporting to a sink, and
    median CPU time a packet (its workers' included, and its start)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never read: the kernel drops
    sink.bind(("127.0.0.1", 0))
    flags = flags if "--workers" in flags else (*flags, "--workers", str(CPUS))
    rates, costs = [], []
    for _ in range(repeat):
        process = subprocess.Popen([sys.executable, "-m", "pyprobe", "replay", str(capture),
                                    "--collector", f"127.0.0.1:{sink.getsockname()[1]}", *flags],
                                   stdout=subprocess.PIPE, text=True, cwd=root)
        out = process.stdout.read()
        cpu = cpu_s(process)
        rates.append(float(re.search(r"s, (\d+) packets/s", out)[1]))
        costs.append(cpu / int(re.search(r"packets read (\d+)", out)[1]))
    sink.close()
    return statistics.median(rates), statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20000,50000,100000,150000,200000",
                        help="packets/s to try, lowest first (comma-separated)")
    parser.add_argument("--seconds", type=float, default=30, help="the shortest trial")
    parser.add_argument("--capture", type=Path, help="default: the 1M-packet synthetic capture")
    parser.add_argument("--probes", default=",".join(p.name for p in PROBES),
                        help="comma-separated subset of: " + ", ".join(p.name for p in PROBES))
    parser.add_argument("--repeat", type=int, default=3, help="offline replays per probe")
    parser.add_argument("--flags", default="", help="pyprobe flags added to every pyprobe probe")
    parser.add_argument("--root", type=Path, default=ROOT, help="the pyprobe tree to run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("live.py makes a network namespace: run it as root")
    capture = args.capture or synthetic_capture(1_000_000)
    rates = [int(rate) for rate in args.rates.split(",")]
    names = [name.strip() for name in args.probes.split(",")]
    extra = tuple(args.flags.split())
    probes = [probe if probe.flags is None or not extra else
              probe._replace(label=f"{probe.label}, {args.flags}")
              for probe in PROBES if probe.name in names]
    loop = truth(capture)
    print(f"{capture.name}: {loop.frames:,} frames a loop, {loop.packets:,} IP packets; "
          f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    rows = []
    with Namespace() as netns:
        for probe in probes:
            best, lossy, costs = None, "", []
            for rate in rates:
                result = trial(netns, probe, capture, loop, rate, args.seconds, args.root, extra)
                print(f"  {probe.label:<34} {rate:>7,}/s: sent {result.sent:,} (of "
                      f"{result.expected.frames:,}), dropped {result.dropped:,}, nfcapd "
                      f"{result.packets:,} packets / {result.octets:,} octets (of "
                      f"{result.expected.packets:,} / {result.expected.octets:,}; its socket "
                      f"dropped {result.collector_drops:,} datagrams); sender "
                      f"{result.sender_cpu:.0%} of a CPU; probe {result.cost * 1e6:.1f} µs "
                      f"CPU a packet metered; load {os.getloadavg()[0]:.2f}", flush=True)
                costs.append(result.cost)
                if not result.lossless:
                    lost = result.expected.packets - result.packets
                    lossy = f"{rate:,}/s: dropped {result.dropped:,}, lost {lost:,}"
                    break
                best = rate
            offline, offline_cost = (replay(capture, probe.flags, args.repeat, args.root)
                                     if probe.flags is not None else (None, None))
            rows.append((probe.label, offline, best, lossy, min(costs), offline_cost))
    print("\n| probe | offline replay, packets/s | lossless live, packets/s | live / offline "
          "| first lossy rate | CPU a packet, live / offline |\n|---|---|---|---|---|---|")
    for name, offline, best, lossy, cost, offline_cost in rows:
        share = f"{best / offline:.0%}" if offline and best else "-"
        costs = f"{cost * 1e6:.1f} µs" + (f" / {offline_cost * 1e6:.1f} µs" if offline_cost
                                         else "")
        print(f"| {name} | {f'{offline:,.0f}' if offline else '-'} | "
              f"{f'{best:,}' if best else f'below {rates[0]:,}'} | {share} | {lossy or '-'} "
              f"| {costs} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
