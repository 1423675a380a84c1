"""How the export socket looks on the network: source address or interface, DSCP, TTL / hop
limit, send buffer; seen on the wire by tshark, between two network namespaces the test makes
(the probe's and the collector's, joined by two veth pairs)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyprobe.export.transport import SocketOptions, TransportError, export_socket

ROOT = Path(__file__).resolve().parent.parent
PYPROBE = [sys.executable, "-m", "pyprobe"]
SAMPLE = ROOT / "pyprobe" / "data" / "sample.pcap"
PORT = 2055


def test_the_send_buffer_is_set_and_a_bad_source_is_a_clear_error() -> None:
    """SO_SNDBUF as asked (Linux doubles it for its bookkeeping); a source the host does not
    have, or of the other IP version, is refused naming the collector and the reason."""
    sock = export_socket("h:1", socket.AF_INET, socket.SOCK_DGRAM, 0,
                         SocketOptions(send_buffer=65536))
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
    sock.close()
    for options, message in (
            (SocketOptions(source="192.0.2.99"),
             "collector h:1: cannot send from 192.0.2.99: Cannot assign requested address"),
            (SocketOptions(source="::1"),
             "collector h:1: cannot send from ::1 to an IPv4 address"),
            (SocketOptions(source="nosuch0"),
             "collector h:1: cannot send through nosuch0: No such device")):
        with pytest.raises(TransportError) as error:
            export_socket("h:1", socket.AF_INET, socket.SOCK_DGRAM, 0, options)
        assert str(error.value) == message


def test_check_refuses_a_source_run_would_refuse(tmp_path: Path) -> None:
    done = subprocess.run([*PYPROBE, "check", "--interface", "lo", "--collector",
                           "127.0.0.1:2055", "--source", "192.0.2.99"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("pyprobe: error: collector 127.0.0.1:2055: cannot send from "
                           "192.0.2.99: Cannot assign requested address\n")


class Hosts:
    """Two network namespaces: the probe's (p0 192.0.2.1 and .11, 2001:db8::1; p1 192.0.2.21)
    and the collector's (c0 192.0.2.2, 2001:db8::2; c1 192.0.2.2 too), p0-c0 and p1-c1 veths."""

    def __init__(self, name: str) -> None:
        self.probe, self.collector = f"{name}-p", f"{name}-c"

    def run(self, host: str, *args: str, **options) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", host, *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, **options)

    def popen(self, host: str, *args: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            return subprocess.Popen(["ip", "netns", "exec", host, *args], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if shutil.which("ip") is None or shutil.which("dumpcap") is None:
        pytest.skip("ip and dumpcap are needed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    made = Hosts(f"pyprobe-tx-{os.getpid()}")
    setup = [f"netns add {made.probe}", f"netns add {made.collector}",
             f"link add p0 netns {made.probe} type veth peer name c0 netns {made.collector}",
             f"link add p1 netns {made.probe} type veth peer name c1 netns {made.collector}",
             f"-n {made.probe} addr add 192.0.2.1/24 dev p0",
             f"-n {made.probe} addr add 192.0.2.11/24 dev p0",
             f"-n {made.probe} addr add 2001:db8::1/64 dev p0 nodad",
             f"-n {made.probe} addr add 192.0.2.21/24 dev p1",
             f"-n {made.collector} addr add 192.0.2.2/24 dev c0",
             f"-n {made.collector} addr add 2001:db8::2/64 dev c0 nodad",
             f"-n {made.collector} addr add 192.0.2.2/24 dev c1"]
    setup += [f"-n {host} link set {link} up" for host, links in (
        (made.probe, ("lo", "p0", "p1")), (made.collector, ("lo", "c0", "c1"))) for link in links]
    try:
        for command in setup:
            done = subprocess.run(["ip", *command.split()], capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"ip {command}: {done.stderr.strip()}")
        yield made
    finally:
        for host in (made.probe, made.collector):
            subprocess.run(["ip", "netns", "del", host], capture_output=True)


def sent(hosts: Hosts, tmp_path: Path, collector: str, *flags: str, tcp: bool = False
         ) -> list[list[str]]:
    """`pyprobe replay` of the sample from the probe's namespace to `collector` with `flags`,
    captured on the collector's two interfaces: per packet from the probe, the interface it
    came in on, its source, DSCP and TTL or hop limit."""
    pcap = tmp_path / "wire.pcapng"
    dumpcap = hosts.popen(hosts.collector, "dumpcap", "-q", "-i", "c0", "-i", "c1", "-f",
                          f"port {PORT}", "-w", str(pcap), log=tmp_path / "dumpcap.log")
    listener = hosts.popen(hosts.collector, *PYPROBE, "collect", "--host", "::", "--port",
                           str(PORT), *(["--tcp"] if tcp else []), log=tmp_path / "collect.log")
    try:
        for _ in range(200):
            if all(ready in (tmp_path / log).read_text() for log, ready in (
                    ("dumpcap.log", "Capturing on"), ("collect.log", "listening on"))):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # dumpcap says so as it opens the capture
        done = hosts.run(hosts.probe, *PYPROBE, "replay", str(SAMPLE), "--no-dpi",
                         "--collector", collector, *flags)
        assert done.returncode == 0 and done.stdout.endswith(" 0 send errors\n"), done.stderr
    finally:
        listener.terminate()
        listener.wait(timeout=10)
        time.sleep(1.5)  # libpcap hands dumpcap its frames in blocks, at most a second late
        dumpcap.terminate()
        dumpcap.wait(timeout=10)
    fields = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-Y", f"{'tcp' if tcp else 'udp'}.dstport == {PORT}",
         "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "ip.src",
         "-e", "ipv6.src", "-e", "ip.dsfield.dscp", "-e", "ipv6.tclass.dscp", "-e", "ip.ttl",
         "-e", "ipv6.hlim"], capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("|") for line in fields.splitlines()]
    assert rows, "nothing captured"
    return [[interface, source4 or source6, dscp4 or dscp6, ttl or hlim]
            for interface, source4, source6, dscp4, dscp6, ttl, hlim in rows]


def test_udp_from_a_source_address_with_dscp_and_ttl(hosts: Hosts, tmp_path: Path) -> None:
    rows = sent(hosts, tmp_path, f"192.0.2.2:{PORT}", "--source", "192.0.2.11", "--dscp", "46",
                "--ttl", "7")
    assert {tuple(row) for row in rows} == {("c0", "192.0.2.11", "46", "7")}


def test_udp_over_ipv6_with_a_traffic_class_and_hop_limit(hosts: Hosts, tmp_path: Path) -> None:
    rows = sent(hosts, tmp_path, f"[2001:db8::2]:{PORT}", "--dscp", "10", "--ttl", "3")
    assert {tuple(row) for row in rows} == {("c0", "2001:db8::1", "10", "3")}


def test_udp_through_an_interface(hosts: Hosts, tmp_path: Path) -> None:
    """`source: p1` binds the socket to p1: the datagrams leave there, from its address (the
    routes alone would send them through p0)."""
    assert {tuple(row) for row in sent(hosts, tmp_path, f"192.0.2.2:{PORT}")} == {
        ("c0", "192.0.2.1", "0", "64")}
    rows = sent(hosts, tmp_path, f"192.0.2.2:{PORT}", "--source", "p1")
    assert {tuple(row) for row in rows} == {("c1", "192.0.2.21", "0", "64")}


def test_tcp_takes_the_same_options(hosts: Hosts, tmp_path: Path) -> None:
    """IPFIX over TCP: every segment the probe sends, SYN included, from the source, with the
    DSCP and TTL."""
    rows = sent(hosts, tmp_path, f"192.0.2.2:{PORT},ipfix,tcp", "--source", "192.0.2.11",
                "--dscp", "8", "--ttl", "9", tcp=True)
    assert len(rows) >= 4  # SYN, ACK, data..., FIN
    assert {tuple(row) for row in rows} == {("c0", "192.0.2.11", "8", "9")}
