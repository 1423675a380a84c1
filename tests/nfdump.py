"""Real collectors for the interop tests: nfcapd and nfdump, and tshark on what the probe sent.

`Nfcapd` runs nfcapd on a loopback port into a directory and stops it by PID with SIGTERM once
its socket is drained, so it flushes every record. `uniflows` reads them back with nfdump,
summed per unidirectional 5-tuple and VLAN, with times to the millisecond. `UdpSink` takes
the probe's datagrams in place of a collector; `write_pcap` and `tshark_frames` let Wireshark's
dissector judge them.
"""
from __future__ import annotations

import calendar
import os
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import dpkt


HOST = "127.0.0.1"
Key = tuple[str, str, int, int, int, int]  # source, destination, ports, protocol, VLAN
Counts = tuple[int, int, int, int]  # packets, bytes, first ms, last ms

# %te/%ts with ms: nfdump 1.7.1's %ter prints wrong milliseconds (README, Collector notes).
FORMAT = "fmt:%ts|%te|%sa|%da|%sp|%dp|%pr|%svln|%pkt|%byt"
ICMP_PROTOCOLS = (1, 58)
RECEIVE_BUFFER = 1 << 23


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _udp_socket_queue(port: int) -> int | None:
    """Octets waiting in the receive queue of the UDP socket bound to 127.0.0.1:port, or None."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16)
    return None


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


class Nfcapd:
    """nfcapd on 127.0.0.1:port writing into `directory`; `stop()` makes it flush its files."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_udp_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> Nfcapd:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory.parent / f"nfcapd-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            ["nfcapd", "-b", HOST, "-p", str(self.port), "-w", str(self.directory),
             "-B", str(RECEIVE_BUFFER)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _until(lambda: _udp_socket_queue(self.port) is not None or self.process.poll() is not None,
               5, f"nfcapd did not bind port {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"nfcapd exited with {self.process.returncode} (port {self.port})")
        return self

    def stop(self) -> None:
        """Waits until nfcapd has read every datagram, then SIGTERM and wait: it writes its files."""
        if self.process is None:
            return
        _until(lambda: not _udp_socket_queue(self.port), 10, "nfcapd did not drain its socket")
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Nfcapd:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def nfdump(*args: str) -> str:
    """nfdump's output, times in UTC."""
    return subprocess.run(["nfdump", *args], capture_output=True, text=True, check=True,
                          timeout=60, env={**os.environ, "TZ": "UTC"}).stdout


def _ms(text: str) -> int:
    moment = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S.%f")
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


def _port(text: str) -> int:
    """A port column; nfdump prints an ICMP destination port as TYPE.CODE."""
    kind, dot, code = text.strip().partition(".")
    return int(kind) * 256 + int(code) if dot else int(kind)


def add_uniflow(totals: dict[Key, Counts], key: Key, packets: int, size: int, first_ms: int,
                last_ms: int) -> None:
    """Adds one record's counts to its 5-tuple's: packets and bytes summed, first and last widened."""
    before = totals.get(key)
    totals[key] = (packets, size, first_ms, last_ms) if before is None else (
        before[0] + packets, before[1] + size, min(before[2], first_ms), max(before[3], last_ms))


def uniflows(directory: Path) -> dict[Key, Counts]:
    """Per unidirectional 5-tuple and VLAN: packets, bytes, first and last ms, as nfdump has them.

    Summed here, not with `nfdump -A`: its aggregation shows ICMP type/code as 0.0 (README,
    Collector notes)."""
    totals: dict[Key, Counts] = {}
    for line in nfdump("-R", str(directory), "-q", "-N", "-6", "-o", FORMAT).splitlines():
        start, end, src, dst, sport, dport, proto, vlan, packets, size = line.split("|")
        add_uniflow(totals, (src.strip(), dst.strip(), int(sport), _port(dport), int(proto),
                             int(vlan)), int(packets), int(size), _ms(start), _ms(end))
    return totals


def summary(directory: Path) -> dict[str, int]:
    """`nfdump -I`: the files' statistics (Flows, Packets, Bytes, Sequence failures, ...)."""
    result = {}
    for line in nfdump("-R", str(directory), "-I").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            result[name.strip()] = int(value)
    return result


class UdpSink:
    """Receives datagrams on 127.0.0.1 in a thread, in place of a collector."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.socket.bind((HOST, 0))
        self.socket.settimeout(0.05)
        self.port = self.socket.getsockname()[1]
        self.datagrams: list[bytes] = []
        """Every datagram received, in order."""
        self.times: list[float] = []
        """When each arrived (time.monotonic())."""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while True:
            try:
                self.datagrams.append(self.socket.recv(65535))
                self.times.append(time.monotonic())
            except TimeoutError:
                if self._done.is_set():
                    return

    def __enter__(self) -> UdpSink:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.socket.close()


def write_pcap(datagrams: list[bytes], path: Path, port: int) -> None:
    """The datagrams as Ethernet/IPv4/UDP frames from 127.0.0.1:9995 to 127.0.0.1:port."""
    loopback = socket.inet_aton(HOST)
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for number, payload in enumerate(datagrams):
            udp = dpkt.udp.UDP(sport=9995, dport=port, data=payload)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=loopback, dst=loopback, p=dpkt.ip.IP_PROTO_UDP, data=udp)
            ip.len = len(ip)
            frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            writer.writepkt(bytes(frame), ts=number / 1000)


def tshark_frames(pcap: Path, port: int, *fields: str) -> list[list[str]]:
    """Per frame, the values of `fields` as tshark decodes the port as CFLOW (lists comma-joined)."""
    args = ["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "fields",
            "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in fields:
        args += ["-e", field]
    output = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("|") for line in output.splitlines()]
