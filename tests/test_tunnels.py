"""Tunnel decoding: exact inner packets of built frames, fallbacks, and the shared tunnel captures.

Frames are built with tests/builders.py and dpkt (GRE); tunnel headers here by their RFCs. On the
shared captures, tshark's dissection of the innermost packet is the independent reference.
"""
from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dpkt.gre
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import (  # noqa: E402
    A4, A6, B4, B6, ETH_8021Q, ETH_ARP, ETH_IP, ETH_IPV6, ICMPV6, SYN, TCP, UDP, ether, icmp, ipv4,
    ipv6, link, tcp, udp, write_pcap,
)
import reference  # noqa: E402
from conftest import BENCH_PCAP, NDPI_PCAPS, ROOT, require  # noqa: E402
from reference import FlowKey  # noqa: E402
from test_captures import assert_same, capture_params, unidirectional_totals  # noqa: E402
from test_decode import fields  # noqa: E402

from pyprobe import FlowStream  # noqa: E402
from pyprobe.capture import PcapSource  # noqa: E402
from pyprobe.collect import Collector  # noqa: E402
from pyprobe.decode import Decoder  # noqa: E402
from pyprobe.export.elements import ElementRegistry  # noqa: E402
from pyprobe.export.exporter import Exporter  # noqa: E402
from pyprobe.export.template import TEMPLATES, load_templates  # noqa: E402
from pyprobe.tunnel import TunnelDecoder  # noqa: E402

C4, D4 = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])  # the tunnel endpoints
C6 = bytes.fromhex("20010db8ffff00000000000000000001")
D6 = bytes.fromhex("20010db8ffff00000000000000000002")
INNER4 = ipv4(tcp(40000, 443, SYN, b"hello"), TCP, ttl=63, tos=0x10)  # 45 octets
INNER6 = ipv6(udp(5353, 53, b"abc"), UDP, hlim=62, tclass=0x20)  # 51 octets
INNER4_FIELDS = dict(src_addr=A4, dst_addr=B4, src_port=40000, dst_port=443, protocol=TCP,
                     vlan_id=0, ip_size=45, ttl=63, tos=0x10, tcp_flags=SYN, icmp_type_code=0)
INNER6_FIELDS = dict(src_addr=A6, dst_addr=B6, src_port=5353, dst_port=53, protocol=UDP,
                     vlan_id=0, ip_size=51, ttl=62, tos=0x20, tcp_flags=0, icmp_type_code=0)
INNER_FIELDS = {INNER4: INNER4_FIELDS, INNER6: INNER6_FIELDS}


# Tunnel headers.

def gtp_u(teid: int, payload: bytes, *, message: int = 255, sequence: int | None = None,
          extensions: tuple[bytes, ...] = (), flags: int = 0x30) -> bytes:
    """GTPv1-U: flags, type, length, TEID; sequence/N-PDU/next-type when S or E; extensions,
    each its contents padded to 4n - 2 octets."""
    if extensions:
        flags |= 0x04
    if sequence is not None:
        flags |= 0x02
    optional = b""
    if flags & 0x07:
        types = [0x85] * len(extensions) + [0]
        optional = struct.pack("!HBB", sequence or 0, 0, types[0])
        optional += b"".join(bytes([(len(body) + 2) // 4]) + body + bytes([types[i + 1]])
                             for i, body in enumerate(extensions))
    body = optional + payload
    return struct.pack("!BBHI", flags, message, len(body), teid) + body


def vxlan(vni: int, frame: bytes, flags: int = 0x08) -> bytes:
    """VXLAN: flags (I), reserved, VNI, reserved, then an Ethernet frame."""
    return struct.pack("!B3xI", flags, vni << 8) + frame


def teredo(packet: bytes, *, auth: tuple[bytes, bytes] | None = None,
           origin: bool = False) -> bytes:
    """Teredo indications (authentication: client id and value; origin) before IPv6."""
    head = b""
    if auth is not None:
        client, value = auth
        head += struct.pack("!HBB", 1, len(client), len(value)) + client + value + bytes(8) + b"\0"
    if origin:
        head += struct.pack("!HH4s", 0, 0xFFFF ^ 40000, bytes([63, 255, 253, 254]))
    return head + packet


def gre(payload: bytes, protocol: int, flags: int = 0, **options: int) -> bytes:
    """GRE by dpkt: flags name the optional fields (sum, key, seq; version 1: len, callid, ack)."""
    return bytes(dpkt.gre.GRE(flags=flags, p=protocol, data=payload, **options))


def pptp(call_id: int, ppp: bytes, *, sequence: int | None = 7, ack: int | None = 5) -> bytes:
    """PPTP's enhanced GRE (version 1, key present) carrying a PPP frame."""
    flags = 0x2001 | (0x1000 if sequence is not None else 0) | (0x0080 if ack is not None else 0)
    return gre(ppp, 0x880B, flags, len=len(ppp), callid=call_id, seq=sequence or 0, ack=ack or 0)


def udp4(port: int, payload: bytes, sport: int = 33333) -> bytes:
    """An outer IPv4/UDP datagram to `port` between the tunnel endpoints."""
    return ipv4(udp(sport, port, payload), UDP, src=C4, dst=D4)


def ip4(payload: bytes, protocol: int) -> bytes:
    return ipv4(payload, protocol, src=C4, dst=D4)


def ip6(payload: bytes, protocol: int) -> bytes:
    return ipv6(payload, protocol, src=C6, dst=D6)


def inner_ether(packet: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    return link(1, packet, tags=tags)


# Each tunnel kind: the outer IP packet, the inner packet, its tunnel id and IP header offset
# in the Ethernet frame (14 + outer headers).
OPENED = {
    "gtp-u": (udp4(2152, gtp_u(0x12345678, INNER4)), INNER4, 0x12345678, 50),
    "gtp-u-sequence": (udp4(2152, gtp_u(1, INNER6, sequence=9)), INNER6, 1, 54),
    "gtp-u-extensions": (udp4(2152, gtp_u(2, INNER4, extensions=(b"\x00\x09", bytes(6)))),
                         INNER4, 2, 66),
    "gtp-u-source-port": (udp4(40000, gtp_u(3, INNER4), sport=2152), INNER4, 3, 50),
    "gtp-u-over-ipv6": (ipv6(udp(2152, 2152, gtp_u(4, INNER4)), UDP, src=C6, dst=D6), INNER4, 4,
                        70),
    "gre": (ip4(gre(INNER4, ETH_IP), 47), INNER4, 0, 38),
    "gre-checksum-key-sequence": (ip4(gre(INNER6, ETH_IPV6, 0xB000, sum=0, off=0, key=0xCAFE,
                                          seq=77), 47), INNER6, 0xCAFE, 50),
    "gre-ethernet": (ip4(gre(inner_ether(INNER4), 0x6558, 0x2000, key=9), 47), INNER4, 9, 56),
    "gre-over-ipv6": (ip6(gre(INNER6, ETH_IPV6), 47), INNER6, 0, 58),
    "pptp": (ip4(pptp(0x9850, b"\xff\x03\x00\x21" + INNER4), 47), INNER4, 0x9850, 54),
    "pptp-compressed": (ip4(pptp(17, b"\x21" + INNER4, sequence=None, ack=None), 47), INNER4, 17,
                        43),
    "pptp-ipv6": (ip4(pptp(18, b"\xff\x03\x00\x57" + INNER6, ack=None), 47), INNER6, 18, 50),
    "vxlan": (udp4(4789, vxlan(0xABCDEF, inner_ether(INNER4))), INNER4, 0xABCDEF, 64),
    "teredo": (udp4(3544, teredo(INNER6)), INNER6, 0, 42),
    "teredo-origin": (udp4(3544, teredo(INNER6, origin=True), sport=3544), INNER6, 0, 50),
    "teredo-auth": (udp4(3544, teredo(INNER6, auth=(b"id", b"mac"))), INNER6, 0, 60),
    "teredo-auth-origin": (udp4(3544, teredo(INNER6, auth=(b"", b""), origin=True)), INNER6, 0,
                           63),
    "4in4": (ip4(INNER4, 4), INNER4, 0, 34),
    "6in4": (ip4(INNER6, 41), INNER6, 0, 34),
    "4in6": (ip6(INNER4, 4), INNER4, 0, 54),
    "6in6": (ip6(INNER6, 41), INNER6, 0, 54),
}


def decode_tunnelled(frame: bytes, linktype: int = 1) -> tuple[Any, TunnelDecoder]:
    decoder = TunnelDecoder(linktype)
    return decoder.decode(1_000, frame), decoder


@pytest.mark.parametrize("name", list(OPENED))
def test_tunnel_is_metered_as_its_inner_packet(name: str) -> None:
    """Key, sizes, TTL, flags and ip_offset are the inner packet's; the tunnel id is kept."""
    outer, inner, tunnel_id, offset = OPENED[name]
    frame = link(1, outer)
    packet, decoder = decode_tunnelled(frame)
    assert fields(packet) == INNER_FIELDS[inner] | {"tunnel_id": tunnel_id, "ip_offset": offset}
    assert packet.ip_packet == inner
    assert (packet.time_ms, packet.frame) == (1_000, frame)
    assert (decoder.skipped, decoder.tunnel_fallbacks) == (Counter(), Counter())


@pytest.mark.parametrize("name", list(OPENED))
def test_tunnel_is_the_outer_packet_when_decoding_is_off(name: str) -> None:
    """Off (the default), a tunnelled packet is its outer packet, as before."""
    outer = OPENED[name][0]
    packet = Decoder(1).decode(1_000, link(1, outer))
    assert (packet.ip_size, packet.ip_offset, packet.tunnel_id) == (len(outer), 14, 0)
    assert packet.src_addr in (C4, C6)


def test_outer_vlan_is_kept_over_the_inner_tag() -> None:
    """The flow's VLAN is the outer frame's; an inner frame's tag counts only when it has none."""
    outer = udp4(4789, vxlan(5, inner_ether(INNER4, ((ETH_8021Q, 7),))))
    tagged, _ = decode_tunnelled(link(1, outer, tags=((ETH_8021Q, 300),)))
    untagged, _ = decode_tunnelled(link(1, outer))
    assert [(p.vlan_id, p.tunnel_id, p.ip_offset, p.src_port) for p in (tagged, untagged)] == [
        (300, 5, 72, 40000), (7, 5, 68, 40000)]


@pytest.mark.parametrize("linktype", [101, 113, 9])
def test_tunnels_on_other_link_types(linktype: int) -> None:
    """Tunnels open behind every link layer, not only Ethernet's."""
    outer, inner, tunnel_id, offset = OPENED["gtp-u"]
    packet, _ = decode_tunnelled(link(linktype, outer), linktype)
    assert (packet.src_port, packet.tunnel_id, packet.ip_offset) == (
        40000, tunnel_id, offset - 14 + {101: 0, 113: 16, 9: 4}[linktype])


def test_plain_frames_decode_alike_with_tunnels_on() -> None:
    """Frames without tunnels give the same packets with tunnel decoding on and off."""
    frames = [link(1, INNER4), link(1, INNER6), link(1, ipv4(udp(1, 2152), UDP, frag=0x2000)),
              link(1, ipv6(icmp(128, 0), ICMPV6)), link(1, INNER4, tags=((ETH_8021Q, 9),))]
    plain, tunnels = Decoder(1), TunnelDecoder(1)
    assert [plain.decode(5, f) for f in frames] == [tunnels.decode(5, f) for f in frames]


# Tunnels that cannot be opened: metered as the outer packet, counted by reason.

BAD_INNER4 = b"\x45" + bytes(9)  # an IPv4 header cut after 10 octets
FALLBACKS = [  # id, outer IP packet, reason
    ("gtp-truncated", udp4(2152, bytes([0x30, 255, 0, 0, 0])), "GTP-U: truncated GTP header"),
    ("gtp-optional-cut", udp4(2152, struct.pack("!BBHI", 0x32, 255, 0, 1) + b"\0"),
     "GTP-U: truncated GTP header"),
    ("gtp-version-2", udp4(2152, gtp_u(1, INNER4, flags=0x48)), "GTP-U: not GTPv1"),
    ("gtp-prime", udp4(2152, gtp_u(1, INNER4, flags=0x20)), "GTP-U: not GTPv1"),
    ("gtp-extension-length-0", udp4(2152, struct.pack("!BBHIHBB", 0x34, 255, 0, 1, 0, 0, 0x85)
                                    + bytes(4) + INNER4), "GTP-U: bad GTP extension header"),
    ("gtp-extension-cut", udp4(2152, gtp_u(1, b"", extensions=(bytes(6),))[:-4]),
     "GTP-U: bad GTP extension header"),
    ("gtp-not-ip", udp4(2152, gtp_u(1, b"\x55" + INNER4[1:])), "GTP-U: no IP packet"),
    ("gtp-empty", udp4(2152, gtp_u(1, b"")), "GTP-U: no IP packet"),
    ("gtp-inner-cut", udp4(2152, gtp_u(1, BAD_INNER4)), "GTP-U: truncated IP header"),
    ("gre-truncated", ip4(b"\0\0\x08", 47), "GRE: truncated GRE header"),
    ("gre-key-cut", ip4(struct.pack("!HHH", 0x2000, ETH_IP, 1), 47), "GRE: truncated GRE header"),
    ("gre-options-cut", ip4(struct.pack("!HH", 0x9000, ETH_IP) + bytes(6), 47),
     "GRE: truncated GRE header"),
    ("gre-routing", ip4(struct.pack("!HHHH", 0xC000, ETH_IP, 0, 0) + INNER4, 47),
     "GRE: GRE routing present"),
    ("gre-version-2", ip4(struct.pack("!HH", 2, ETH_IP) + INNER4, 47), "GRE: bad GRE version"),
    ("gre-version-1-not-ppp", ip4(struct.pack("!HHHH", 0x2001, ETH_IP, 45, 1) + INNER4, 47),
     "GRE: bad GRE version"),
    ("gre-erspan", ip4(gre(bytes(40), 0x88BE), 47), "GRE: not IP"),
    ("gre-ethernet-cut", ip4(gre(bytes(13), 0x6558), 47), "GRE: truncated inner Ethernet header"),
    ("pptp-key-cut", ip4(struct.pack("!HHH", 0x2001, 0x880B, 1), 47), "GRE: truncated GRE header"),
    ("pptp-ppp-cut", ip4(pptp(1, b"\xff\x03\x00"), 47), "GRE: truncated PPP header"),
    ("pptp-inner-cut", ip4(pptp(1, b"\x21" + BAD_INNER4), 47), "GRE: truncated IP header"),
    ("vxlan-truncated", udp4(4789, bytes([8, 0, 0, 0, 0, 0, 1])), "VXLAN: truncated VXLAN header"),
    ("vxlan-no-vni", udp4(4789, vxlan(5, inner_ether(INNER4), flags=0)),
     "VXLAN: VXLAN VNI flag not set"),
    ("vxlan-ethernet-cut", udp4(4789, vxlan(5, bytes(13))),
     "VXLAN: truncated inner Ethernet header"),
    ("vxlan-arp", udp4(4789, vxlan(5, ether(bytes(28), ETH_ARP))), "VXLAN: not IP"),
    ("teredo-ipv4", udp4(3544, INNER4), "Teredo: no IPv6 packet"),
    ("teredo-empty", udp4(3544, b""), "Teredo: no IPv6 packet"),
    ("teredo-auth-cut", udp4(3544, teredo(INNER6, auth=(b"", b"x"))[:12]),
     "Teredo: no IPv6 packet"),
    ("teredo-inner-cut", udp4(3544, INNER6[:39]), "Teredo: truncated IP header"),
    ("4in4-transport-cut", ip4(INNER4[:30], 4), "IPv4 in IP: truncated transport header"),
    ("4in4-ipv6-inside", ip4(INNER6, 4), "IPv4 in IP: bad IP version"),
    ("6in4-ipv4-inside", ip4(INNER4, 41), "IPv6 in IP: bad IP version"),
    ("6in6-cut", ip6(INNER6[:20], 41), "IPv6 in IP: truncated IP header"),
]


@pytest.mark.parametrize(("outer", "reason"), [case[1:] for case in FALLBACKS],
                         ids=[case[0] for case in FALLBACKS])
def test_malformed_tunnel_falls_back_to_the_outer_packet(outer: bytes, reason: str) -> None:
    """Metered exactly as with decoding off, never skipped; the reason is counted once."""
    frame = link(1, outer)
    packet, decoder = decode_tunnelled(frame)
    assert packet == Decoder(1).decode(1_000, frame)
    assert (decoder.tunnel_fallbacks, decoder.skipped) == (Counter({reason: 1}), Counter())


SIGNALLING = {  # tunnelled packets without a user packet: the outer packet, and no fallback
    "gtp-echo-request": udp4(2152, gtp_u(0, b"", message=1, sequence=1)),
    "gtp-end-marker": udp4(2152, gtp_u(7, b"", message=254)),
    "pptp-ack-only": ip4(pptp(1, b"", sequence=None), 47),
    "pptp-lcp": ip4(pptp(1, b"\xff\x03\xc0\x21\x09\x01\x00\x08" + bytes(4)), 47),
    "pptp-mppe": ip4(pptp(1, b"\x00\xfd\x90\x01" + bytes(30)), 47),
}


@pytest.mark.parametrize("name", list(SIGNALLING))
def test_tunnel_signalling_is_the_outer_packet(name: str) -> None:
    frame = link(1, SIGNALLING[name])
    packet, decoder = decode_tunnelled(frame)
    assert packet == Decoder(1).decode(1_000, frame)
    assert (decoder.tunnel_fallbacks, decoder.skipped) == (Counter(), Counter())


def test_cut_and_corrupted_tunnels_never_crash() -> None:
    """Every tunnel frame cut at every length, and with each octet set to 0x00 and to 0xFF:
    each decodes to a packet or is skipped once, never raises."""
    frames = [link(1, outer) for outer, *_ in OPENED.values()]
    variants = [frame[:cut] for frame in frames for cut in range(len(frame))]
    variants += [frame[:i] + bytes([octet]) + frame[i + 1:] for frame in frames
                 for i in range(len(frame)) for octet in (0x00, 0xFF)]
    decoder = TunnelDecoder(1)
    decoded = sum(decoder.decode(1_000, frame) is not None for frame in variants)
    assert decoded + sum(decoder.skipped.values()) == len(variants) == 6_297
    assert (decoded, sum(decoder.tunnel_fallbacks.values())) == (5_353, 1_202)


def test_outer_fragments_are_not_opened() -> None:
    """A fragmented tunnel packet is metered as its outer fragments, in one outer flow."""
    datagram = udp(33333, 2152, gtp_u(1, INNER4))
    first = ipv4(datagram[:24], UDP, src=C4, dst=D4, ident=5, frag=0x2000)
    later = ipv4(datagram[24:], UDP, src=C4, dst=D4, ident=5, frag=3)
    decoder = TunnelDecoder(1)
    packets = [decoder.decode(1_000, link(1, ip)) for ip in (first, later)]
    assert [(p.src_addr, p.src_port, p.dst_port, p.protocol, p.tunnel_id, p.ip_offset)
            for p in packets] == [(C4, 33333, 2152, UDP, 0, 14)] * 2
    assert decoder.tunnel_fallbacks == Counter()


def test_inner_fragments_join_the_inner_flow() -> None:
    """Fragments inside a tunnel are matched among the inner packets, keeping the tunnel id."""
    datagram = udp(5000, 6000, bytes(40))
    first = ipv4(datagram[:24], UDP, ident=9, frag=0x2000)
    later = ipv4(datagram[24:], UDP, ident=9, frag=3)
    decoder = TunnelDecoder(1)
    packets = [decoder.decode(1_000, link(1, udp4(2152, gtp_u(77, ip)))) for ip in (first, later)]
    assert [(p.src_addr, p.src_port, p.dst_port, p.ip_size, p.tunnel_id, p.ip_offset)
            for p in packets] == [(A4, 5000, 6000, 44, 77, 50), (A4, 5000, 6000, 44, 77, 50)]


def test_tunnel_inside_a_tunnel_is_not_opened() -> None:
    """One tunnel deep: VXLAN inside GTP-U is metered as the inner UDP packet to port 4789."""
    nested = ipv4(udp(1234, 4789, vxlan(5, inner_ether(INNER4))), UDP)
    packet, decoder = decode_tunnelled(link(1, udp4(2152, gtp_u(8, nested))))
    assert (packet.src_addr, packet.src_port, packet.dst_port, packet.tunnel_id,
            packet.ip_size) == (A4, 1234, 4789, 8, len(nested))
    assert decoder.tunnel_fallbacks == Counter()


def test_flow_stream_meters_inner_flows(tmp_path: Path) -> None:
    """Both GTP directions (their own TEIDs) make one inner flow; off, two outer flows."""
    up = link(1, udp4(2152, gtp_u(0x100, INNER4), sport=2152))
    reply = ipv4(tcp(443, 40000, SYN | 0x10), TCP, src=B4, dst=A4, ttl=50)
    down = link(1, ipv4(udp(2152, 2152, gtp_u(0x200, reply)), UDP, src=D4, dst=C4))
    bad = link(1, udp4(2152, gtp_u(1, BAD_INNER4)))
    path = write_pcap(tmp_path / "gtp.pcap", [(1_000, up), (1_010, down), (1_020, up),
                                             (1_030, bad)])
    on = FlowStream(str(path), dpi=False, decode_tunnels=True)
    flows = list(on)
    assert [(f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.protocol, f.tunnel_id,
             f.src2dst_packets, f.src2dst_bytes, f.dst2src_packets, f.dst2src_bytes)
            for f in flows] == [
        ("10.0.0.1", 40000, "10.0.0.2", 443, TCP, 0x100, 2, 90, 1, 40),
        ("192.0.2.1", 33333, "192.0.2.2", 2152, UDP, 0, 1, 46, 0, 0)]
    assert (flows[0].src2dst.tunnel_id, flows[0].reverse.tunnel_id) == (0x100, 0x200)
    assert on.stats.to_dict()["tunnel_fallbacks"] == {"GTP-U: truncated IP header": 1}
    # On the wire (pyprobe/export/templates/ndpi.yaml), each record carries both ends' TEIDs.
    registry = ElementRegistry.default()
    exporter = Exporter("ipfix", load_templates(TEMPLATES / "ndpi.yaml", registry), registry)
    messages = exporter.export(flows[:1], 2_000) + exporter.flush(2_000)
    records = [r.as_dict()["fields"] for m in messages
               for r in Collector(registry).feed(m, ("192.0.2.9", 4739)) if r.template_id == 260]
    assert [(r["UPSTREAM_TUNNEL_ID"], r["DOWNSTREAM_TUNNEL_ID"]) for r in records] == [
        (0x100, 0x200), (0x100, 0x200)]
    assert (on.stats.packets_decoded, on.stats.skipped) == (4, Counter())
    off = list(FlowStream(str(path), dpi=False))
    assert [(f.src_port, f.dst_port, f.bidirectional_packets, f.bidirectional_bytes)
            for f in off] == [(2152, 2152, 3, 81 + 76 + 81), (33333, 2152, 1, 46)]


def test_cli_decode_tunnels(tmp_path: Path) -> None:
    """`replay --decode-tunnels --json` prints the inner flow with its tunnel id."""
    path = write_pcap(tmp_path / "vxlan.pcap", [(1_000, link(1, OPENED["vxlan"][0]))])
    run = subprocess.run([sys.executable, "-m", "pyprobe", "replay", str(path), "--json",
                          "--decode-tunnels"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    flow = json.loads(run.stdout)
    assert {k: flow[k] for k in ("src_ip", "dst_port", "protocol", "tunnel_id",
                                 "bidirectional_bytes")} == {
        "src_ip": "10.0.0.1", "dst_port": 443, "protocol": TCP, "tunnel_id": 0xABCDEF,
        "bidirectional_bytes": 45}


# The shared captures.

TUNNEL_CAPTURES = {  # capture: (flows with decoding off, on), the tunnel ids seen (tshark's)
    "4in4tunnel.pcap": ((5, 5), {0}), "4in6tunnel.pcap": ((1, 1), {0}),
    "6in4tunnel.pcap": ((1, 10), {0}), "6in6tunnel.pcap": ((2, 1), {0}),
    "gre.pcapng": ((1, 1), {0x9850}), "ipv6_in_gtp.pcap": ((2, 2), {0x12808FB8, 0x074C15B0}),
    "teredo.pcap": ((6, 5), {0}), "vxlan.pcap": ((9, 4), {1111}),
}
CHANGED_BY_TUNNELS = set(TUNNEL_CAPTURES) | {"syslog.pcap"}  # syslog: a few 6in4 packets
TSHARK_FIELDS = ("frame.protocols", "ip.src", "ip.dst", "ip.len", "ip.proto", "ipv6.src",
                 "ipv6.dst", "ipv6.plen", "ipv6.nxt", "tcp.srcport", "tcp.dstport", "udp.srcport",
                 "udp.dstport", "vlan.id")


def tshark_inner_totals(path: Path) -> dict[FlowKey, list[int]]:
    """[packets, bytes] per one-way 5-tuple of tshark's innermost tunnelled IP packet (or the
    only one): the second IP layer when the first carries IP, GRE, GTP, VXLAN or Teredo."""
    run = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=,", *(arg for f in TSHARK_FIELDS for arg in ("-e", f))],
                         capture_output=True, text=True, check=True, timeout=60)
    totals: dict[FlowKey, list[int]] = {}
    for line in run.stdout.splitlines():
        values = {f: v.split(",") if v else [] for f, v in zip(TSHARK_FIELDS, line.split("\t"))}
        layers = values["frame.protocols"][0].split(":")
        ips = [i for i, layer in enumerate(layers) if layer in ("ip", "ipv6")]
        after = layers[ips[0] + 1:ips[0] + 3]
        tunnelled = after[0] in ("ip", "ipv6", "gre") or after[1:] in (["gtp"], ["vxlan"],
                                                                       ["teredo"])
        at = ips[1] if tunnelled else ips[0]
        kind = layers[at]
        n = layers[:at].count(kind)
        if kind == "ip":
            src, dst = (socket.inet_pton(socket.AF_INET, values[f][n])
                        for f in ("ip.src", "ip.dst"))
            size, protocol = int(values["ip.len"][n]), int(values["ip.proto"][n])
        else:
            src, dst = (socket.inet_pton(socket.AF_INET6, values[f][n])
                        for f in ("ipv6.src", "ipv6.dst"))
            size, protocol = int(values["ipv6.plen"][n]) + 40, int(values["ipv6.nxt"][n])
        ports = (0, 0)
        if protocol in (TCP, UDP):
            name = "tcp" if protocol == TCP else "udp"
            m = layers[:at].count(name)
            ports = (int(values[f"{name}.srcport"][m]), int(values[f"{name}.dstport"][m]))
        vlan = int(values["vlan.id"][0]) if values["vlan.id"] else 0
        entry = totals.setdefault((src, dst, *ports, protocol, vlan), [0, 0])
        entry[0] += 1
        entry[1] += size
    return totals


@pytest.mark.parametrize("name", list(TUNNEL_CAPTURES))
def test_tunnel_capture_inner_flows_match_tshark(name: str) -> None:
    """Each tunnel capture: the flows' per-direction totals are tshark's inner packets', exactly;
    the flow counts with decoding off and on, and the tunnel ids."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    path = require(NDPI_PCAPS / name)
    (flows_off, flows_on), tunnel_ids = TUNNEL_CAPTURES[name]
    on = FlowStream(str(path), dpi=False, decode_tunnels=True)
    flows = list(on)
    assert_same(tshark_inner_totals(path), unidirectional_totals(flows), reference.format_key)
    assert (len(list(FlowStream(str(path), dpi=False))), len(flows)) == (flows_off, flows_on)
    assert {flow.tunnel_id for flow in flows} == tunnel_ids
    assert (on.stats.skipped, on.stats.tunnel_fallbacks) == (Counter(), Counter())


@pytest.mark.parametrize("path", capture_params())
def test_tunnel_decoding_conserves_packets(path: Path) -> None:
    """Every nDPI capture with decoding on: the same frames metered and skipped as with it off,
    each metered packet in one flow, and flows changed only in the captures with tunnels."""
    off = FlowStream(str(path), dpi=False)
    on = FlowStream(str(path), dpi=False, decode_tunnels=True)
    off_totals, on_flows = unidirectional_totals(off), list(on)
    assert (on.stats.packets_read, on.stats.packets_decoded, on.stats.skipped) == (
        off.stats.packets_read, off.stats.packets_decoded, off.stats.skipped)
    assert sum(flow.bidirectional_packets for flow in on_flows) == on.stats.packets_decoded
    assert (unidirectional_totals(on_flows) != off_totals) == (path.name in CHANGED_BY_TUNNELS)
    assert on.stats.tunnel_fallbacks == Counter()


NDPI_LABELS = {  # capture: nDPI's labels of its flows with decoding off, and on (ndpiReader's)
    "vxlan.pcap": ({"VXLAN": 9}, {"TLS.Facebook": 2, "DNS.Facebook": 2}),
    "gre.pcapng": ({"GRE": 1}, {"SIP": 1}),
    "6in4tunnel.pcap": ({"Unknown": 1}, {"ICMPV6": 3, "DNS.Facebook": 2, "IMAPS": 2, "HTTP": 1,
                                         "TLS": 1, "TLS.Facebook": 1}),
}


@pytest.mark.parametrize("name", list(NDPI_LABELS))
def test_ndpi_classifies_the_inner_packets(name: str) -> None:
    """nDPI is handed the inner packet: the tunnel's label off, the applications inside on."""
    path = require(NDPI_PCAPS / name)
    labels = [Counter(flow.application_name for flow in FlowStream(str(path), decode_tunnels=on))
              for on in (False, True)]
    assert labels == [Counter(expected) for expected in NDPI_LABELS[name]]


# Packets per tunnel id in the bench capture as tshark counts them: `tshark -Y "gtp.message == 255
# || vxlan || gre" -T fields -e gtp.teid -e vxlan.vni -e gre.key.call_id` (5 s, so kept here).
BENCH_TUNNEL_PACKETS = {
    0x000061B2: 1, 0x013C5B74: 13, 0x014CC10C: 8, 0x03D44F54: 2, 0x0444B5AE: 13, 0x0470BCAF: 22,
    0x06607759: 8, 0x074C15B0: 1, 0x07E029A2: 2, 0x07ECE496: 2, 0x0E2C1DC7: 3, 0x12808FB8: 1,
    0x1C4374D3: 2, 0x207536D7: 9, 0x41B13F5C: 14, 0x6DF68415: 8, 0x7EAA0C89: 1, 0x92480006: 1,
    0xA2F254E5: 20, 0xD6201B11: 9, 0xDFD5B186: 2, 1111: 127, 0x9850: 1,
}


def test_bench_capture_tunnel_ids_and_conservation() -> None:
    """The merged bench capture: every GTP-U, VXLAN and PPTP packet opened with tshark's tunnel
    id, and the same frames metered and skipped as with decoding off, each in one flow."""
    path = require(BENCH_PCAP)
    capture = PcapSource(str(path))
    decoder = TunnelDecoder(capture.linktype)
    try:
        packets = [decoder.decode(ts_ns // 1_000_000, frame) for ts_ns, frame in capture]
    finally:
        capture.close()
    assert Counter(p.tunnel_id for p in packets if p is not None and p.tunnel_id) == Counter(
        BENCH_TUNNEL_PACKETS)
    off = FlowStream(str(path), dpi=False)
    off_flows = sum(1 for _ in off)
    on = FlowStream(str(path), dpi=False, decode_tunnels=True)
    on_packets = sum(flow.bidirectional_packets for flow in on)
    assert (on.stats.packets_read, on.stats.packets_decoded, on.stats.skipped) == (
        off.stats.packets_read, off.stats.packets_decoded, off.stats.skipped)
    assert (on_packets, sum(on.stats.flows.values()), off_flows) == (84_898, 9_105, 9_103)
    assert on.stats.tunnel_fallbacks == Counter()
