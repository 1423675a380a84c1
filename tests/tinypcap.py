"""Tiny Ethernet captures built with dpkt, with known times and sizes, for the plugin tests.

A frame is (time in ms after `EPOCH_MS`, bytes). IP sizes: IPv4 20 + TCP 20 or UDP 8 + payload;
IPv6 40 + the same. `session()` is the capture the Streamer and plugin tests share.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import dpkt

from pyprobe.flow import TH_ACK, TH_FIN, TH_PSH, TH_SYN

EPOCH_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
Frame = tuple[int, bytes]
CLIENT, SERVER, RESOLVER = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def ethernet(ip: bytes, version: int = 4, vlan: int = 0) -> bytes:
    """An Ethernet II frame around `ip`, 802.1Q-tagged when `vlan` is set."""
    header = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    if vlan:
        header += struct.pack("!HH", 0x8100, vlan)
    return header + struct.pack("!H", 0x0800 if version == 4 else 0x86DD) + ip


def ip_frame(ms: int, src: str, dst: str, transport: dpkt.Packet, protocol: int, vlan: int = 0) -> Frame:
    """A frame carrying `transport` from `src` to `dst` (IPv6 when the addresses have colons)."""
    if ":" in src:
        packed = (socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
        ip = dpkt.ip6.IP6(src=packed[0], dst=packed[1], nxt=protocol, hlim=64, data=transport,
                          plen=len(bytes(transport)))
        return ms, ethernet(bytes(ip), 6, vlan)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=protocol, ttl=64,
                    data=transport)
    return ms, ethernet(bytes(ip), 4, vlan)


def tcp(ms: int, src: str, sport: int, dst: str, dport: int, flags: int, payload: bytes = b"",
        vlan: int = 0) -> Frame:
    """A TCP segment without options."""
    return ip_frame(ms, src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=payload),
                    6, vlan)


def udp(ms: int, src: str, sport: int, dst: str, dport: int, payload: bytes = b"",
        vlan: int = 0) -> Frame:
    """A UDP datagram."""
    return ip_frame(ms, src, dst, dpkt.udp.UDP(sport=sport, dport=dport, data=payload), 17, vlan)


def write_pcap(path: Path, frames: Iterable[Frame]) -> str:
    """Writes `frames` as a microsecond pcap at `path`; returns the path as a string."""
    with open(path, "wb") as file:
        writer = dpkt.pcap.Writer(file, snaplen=65535)
        for ms, frame in frames:
            writer.writepkt(frame, ts=(EPOCH_MS + ms) / 1000)
    return str(path)


def session() -> list[Frame]:
    """A closed HTTP-like TCP flow and a 3-packet DNS-like UDP flow, all within 120 ms.

    TCP 10.0.0.1:40000 <-> 10.0.0.2:80, IP sizes (c = client to server, s = back):
      0 c SYN 40 | 10 s SYN-ACK 40 | 20 c ACK 40 | 30 c PSH-ACK 140 | 40 s ACK 40
      50 s PSH-ACK 340 | 60 c PSH-ACK 90 | 70 c FIN-ACK 40 | 80 s FIN-ACK 40 | 90 c ACK 40
      -> c: 6 packets 390 bytes, s: 4 packets 460 bytes.
    UDP 10.0.0.1:5000 <-> 10.0.0.3:53: 100 c 38 | 110 s 58 | 120 c 48 (payloads 10, 30, 20).
    """
    c, s = (CLIENT, 40000, SERVER, 80), (SERVER, 80, CLIENT, 40000)
    return [
        tcp(0, *c, TH_SYN),
        tcp(10, *s, TH_SYN | TH_ACK),
        tcp(20, *c, TH_ACK),
        tcp(30, *c, TH_PSH | TH_ACK, b"q" * 100),
        tcp(40, *s, TH_ACK),
        tcp(50, *s, TH_PSH | TH_ACK, b"r" * 300),
        tcp(60, *c, TH_PSH | TH_ACK, b"q" * 50),
        tcp(70, *c, TH_FIN | TH_ACK),
        tcp(80, *s, TH_FIN | TH_ACK),
        tcp(90, *c, TH_ACK),
        udp(100, CLIENT, 5000, RESOLVER, 53, b"d" * 10),
        udp(110, RESOLVER, 53, CLIENT, 5000, b"a" * 30),
        udp(120, CLIENT, 5000, RESOLVER, 53, b"d" * 20),
    ]
