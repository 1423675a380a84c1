"""Frame builders for tests: transport, IPv4/IPv6 (options, extension headers), link layers, pcaps.

Every builder returns plain `bytes`, so frames can be cut, padded or corrupted freely. Checksums
are left 0: the meter never reads them. Import from a test with `from builders import ...`
(pytest's importlib mode finds it through the `sys.path` line each test module starts with).

>>> len(ipv4(udp(1, 2, b"xy"), 17))
30
>>> frame = link(1, ipv4(udp(1, 2), 17), tags=((0x8100, 7),))
>>> frame[12:16].hex(), len(frame)
('81000007', 46)
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import dpkt

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS = 0, 43, 44, 51, 60
ETH_IP, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
ETH_8021Q, ETH_8021AD, ETH_MPLS, ETH_PPPOE = 0x8100, 0x88A8, 0x8847, 0x8864
PPP_IP, PPP_IPV6, PPP_LCP = 0x0021, 0x0057, 0xC021


# Transport.

def tcp(sport: int, dport: int, flags: int = 0, payload: bytes = b"") -> bytes:
    """A 20-byte TCP header (data offset 5) and its payload."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header with the right length, and its payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """An SCTP common header (ports, verification tag, checksum) and its chunks."""
    return struct.pack("!HHII", sport, dport, 0x1234, 0) + payload


def icmp(icmp_type: int, code: int, payload: bytes = b"") -> bytes:
    """An ICMP or ICMPv6 header (type, code, checksum, 4 bytes of rest) and its payload."""
    return struct.pack("!BBHI", icmp_type, code, 0, 0) + payload


# Network.

def ipv4(payload: bytes, proto: int, *, src: bytes = A4, dst: bytes = B4, ttl: int = 64,
         tos: int = 0, ident: int = 1, frag: int = 0, options: bytes = b"",
         total_length: int | None = None, ver_ihl: int | None = None) -> bytes:
    """An IPv4 packet; `frag` is the flags/offset field (0x2000 = MF, low 13 bits = offset/8)."""
    if ver_ihl is None:
        ver_ihl = 0x40 | (20 + len(options)) // 4
    size = 20 + len(options) + len(payload) if total_length is None else total_length
    return struct.pack("!BBHHHBBH4s4s", ver_ihl, tos, size, ident, frag, ttl, proto, 0, src,
                       dst) + options + payload


def ext_header(kind: int, next_header: int, size: int = 8,
               fragment: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """One IPv6 extension header of `size` bytes; for a fragment header (offset/8, M, id).

    Bodies are filled with 0xFE, so a header misread at a wrong offset shows as protocol 254.
    """
    if kind == FRAGMENT:
        offset, more, ident = fragment
        return struct.pack("!BBHI", next_header, 0, offset << 3 | more, ident)
    if kind == AH:  # length in 4-octet units minus 2 (RFC 4302)
        return bytes([next_header, size // 4 - 2]) + b"\xfe" * (size - 2)
    return bytes([next_header, size // 8 - 1]) + b"\xfe" * (size - 2)  # 8-octet units - 1


def ipv6(payload: bytes, proto: int, *, src: bytes = A6, dst: bytes = B6, hlim: int = 64,
         tclass: int = 0, flow_label: int = 0, ext: Sequence[tuple[int, int]] = (),
         fragment: tuple[int, int, int] = (0, 0, 0), payload_length: int | None = None) -> bytes:
    """An IPv6 packet with extension headers `ext`, each (kind, size), chained in order."""
    kinds = [kind for kind, _ in ext] + [proto]
    headers = b"".join(ext_header(kind, kinds[i + 1], size, fragment)
                       for i, (kind, size) in enumerate(ext))
    body = headers + payload
    length = len(body) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 6 << 28 | tclass << 20 | flow_label, length, kinds[0], hlim,
                       src, dst) + body


# Link layers.

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def ethertype_of(packet: bytes) -> int:
    """The ethertype of an IP packet, from its version nibble."""
    return ETH_IPV6 if packet[:1] and packet[0] >> 4 == 6 else ETH_IP


def mpls(labels: Sequence[int], payload: bytes, ttl: int = 64) -> bytes:
    """An MPLS label stack, bottom-of-stack bit on the last label, and the payload."""
    return b"".join(struct.pack("!I", label << 12 | (i == len(labels) - 1) << 8 | ttl)
                    for i, label in enumerate(labels)) + payload


def pppoe(payload: bytes, ppp_proto: int = PPP_IP, session: int = 0x11) -> bytes:
    """A PPPoE session header (ver/type 0x11, code 0) and the PPP protocol, then the payload."""
    return struct.pack("!BBHHH", 0x11, 0, session, len(payload) + 2, ppp_proto) + payload


def ether(payload: bytes, ethertype: int, tags: Sequence[tuple[int, int]] = ()) -> bytes:
    """An Ethernet II frame with VLAN tags, each (TPID, TCI), outermost first."""
    types = [tpid for tpid, _ in tags] + [ethertype]
    vlan = b"".join(struct.pack("!HH", tci, types[i + 1]) for i, (_, tci) in enumerate(tags))
    return MAC_B + MAC_A + struct.pack("!H", types[0]) + vlan + payload


def link(linktype: int, packet: bytes, ethertype: int | None = None, *,
         tags: Sequence[tuple[int, int]] = (), ppp_header: bool = True) -> bytes:
    """`packet` framed for `linktype`; `ethertype` defaults to IPv4/IPv6 from the packet."""
    et = ethertype_of(packet) if ethertype is None else ethertype
    v6 = et == ETH_IPV6
    if linktype == 1:
        return ether(packet, et, tags)
    if linktype == 113:  # packet type, ARPHRD, address length, address (8), protocol
        return struct.pack("!HHH8sH", 0, 1, 6, MAC_A, et) + packet
    if linktype == 276:  # protocol, reserved, ifindex, ARPHRD, packet type, address length, address
        return struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, MAC_A) + packet
    if linktype in (101, 228, 229):
        return packet
    if linktype == 0:  # host (here little-endian) byte order; AF_INET6 differs by OS: BSD's 24
        return struct.pack("<I", 24 if v6 else 2) + packet
    if linktype == 108:
        return struct.pack("!I", 24 if v6 else 2) + packet
    if linktype == 9:
        proto = {ETH_IP: PPP_IP, ETH_IPV6: PPP_IPV6}.get(et, et)
        return (b"\xff\x03" if ppp_header else b"") + struct.pack("!H", proto) + packet
    if linktype == 104:
        return struct.pack("!BBH", 0x0F, 0, et) + packet
    raise ValueError(f"no builder for link type {linktype}")


# Captures.

def write_pcap(path: Path, records: Iterable[tuple[int, bytes]], linktype: int = 1) -> Path:
    """Writes (time in ms, frame) records as a microsecond pcap of `linktype`; returns `path`."""
    with open(path, "wb") as file:
        writer = dpkt.pcap.Writer(file, snaplen=65535, linktype=linktype)
        for time_ms, frame in records:
            writer.writepkt_time(frame, Fraction(time_ms, 1000))  # exact: no float rounding
    return path


def write_pcapng(path: Path, records: Iterable[tuple[int, bytes]], linktype: int = 1) -> Path:
    """Writes (time in ms, frame) records as a microsecond pcapng of `linktype` (times to 2^64
    us, exact); returns `path`."""
    with open(path, "wb") as file:
        dpkt.pcapng.Writer(file, snaplen=65535, linktype=linktype)  # the section and interface
        for time_ms, frame in records:
            us = time_ms * 1000
            file.write(bytes(dpkt.pcapng.EnhancedPacketBlockLE(
                ts_high=us >> 32, ts_low=us & 0xFFFFFFFF, caplen=len(frame), pkt_len=len(frame),
                pkt_data=frame)))
    return path
