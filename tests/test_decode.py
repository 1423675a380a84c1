"""Decoder: exact Packet fields for every link type, encapsulation, IP variant and skip reason.

Frames are built with tests/builders.py; captures are written to tmp_path and read back through
`FlowStream`, so libpcap's link-type handling is covered too.
"""
from __future__ import annotations

import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import (  # noqa: E402
    A4, A6, ACK, AH, B4, B6, CWR, DEST_OPTS, ECE, ETH_8021AD, ETH_8021Q, ETH_ARP, ETH_IP,
    ETH_MPLS, ETH_PPPOE, FIN, FRAGMENT, HOP_BY_HOP, ICMP, ICMPV6, MAC_A, MAC_B, PPP_IP, PPP_IPV6,
    PPP_LCP, PSH, ROUTING, SCTP, SYN, TCP, UDP, URG, ether, ethertype_of, icmp, ipv4, ipv6, link, mpls, pppoe,
    sctp, tcp, udp, write_pcap,
)
from pyprobe import FlowStream, Packet  # noqa: E402
from pyprobe import decode as decode_module  # noqa: E402
from pyprobe.cache import FlowCache  # noqa: E402
from pyprobe.decode import (  # noqa: E402
    BAD_IP_HEADER, BAD_IP_LENGTH, BAD_IP_VERSION, NOT_IP, TRUNCATED_IP, TRUNCATED_LINK,
    TRUNCATED_TRANSPORT, Decoder,
)
from pyprobe.errors import CaptureError  # noqa: E402
from pyprobe.tunnel import TunnelDecoder  # noqa: E402

# The reference packets: UDP 5353 -> 53 with 3 bytes of data, TTL 57, DSCP/ECN 0x28.
UDP4 = ipv4(udp(5353, 53, b"abc"), UDP, ttl=57, tos=0x28)
UDP6 = ipv6(udp(5353, 53, b"abc"), UDP, hlim=57, tclass=0x28, flow_label=0x12345)
IP = {4: UDP4, 6: UDP6}
EXPECTED = {
    4: dict(src_addr=A4, dst_addr=B4, src_port=5353, dst_port=53, protocol=UDP, vlan_id=0,
            ip_size=31, ttl=57, tos=0x28, tcp_flags=0, icmp_type_code=0, tunnel_id=0),
    6: dict(src_addr=A6, dst_addr=B6, src_port=5353, dst_port=53, protocol=UDP, vlan_id=0,
            ip_size=51, ttl=57, tos=0x28, tcp_flags=0, icmp_type_code=0, tunnel_id=0),
}


def fields(packet: Packet | None) -> dict[str, Any]:
    """The packet's fields except the frame and the timestamp."""
    assert packet is not None
    values = packet._asdict()
    del values["frame"], values["time_ms"]
    return values


def decode_one(linktype: int, frame: bytes, time_ms: int = 1_000) -> Packet:
    """Decodes one frame that must decode, checking the frame and timestamp are carried."""
    decoder = Decoder(linktype)
    packet = decoder.decode(time_ms, frame)
    assert packet is not None, decoder.skipped
    assert (packet.time_ms, packet.frame, decoder.skipped, decoder.skipped_octets) == (
        time_ms, frame, Counter(), 0)
    return packet


# Link types.

LINK_CASES = [  # linktype, IP version, PPP address/control present, IP header offset
    (1, 4, True, 14), (1, 6, True, 14), (113, 4, True, 16), (113, 6, True, 16),
    (276, 4, True, 20), (276, 6, True, 20), (101, 4, True, 0), (101, 6, True, 0),
    (228, 4, True, 0), (229, 6, True, 0), (0, 4, True, 4), (0, 6, True, 4), (108, 4, True, 4),
    (108, 6, True, 4), (9, 4, True, 4), (9, 6, True, 4), (9, 4, False, 2), (9, 6, False, 2),
    (104, 4, True, 4), (104, 6, True, 4),
]
LINK_IDS = [f"lt{lt}-v{v}{'' if ppp else '-noff03'}" for lt, v, ppp, _ in LINK_CASES]


@pytest.mark.parametrize(("linktype", "version", "ppp_header", "offset"), LINK_CASES, ids=LINK_IDS)
def test_link_types_decode(linktype: int, version: int, ppp_header: bool, offset: int) -> None:
    """Each supported link type finds the IP header at its exact offset."""
    frame = link(linktype, IP[version], ppp_header=ppp_header)
    packet = decode_one(linktype, frame)
    assert fields(packet) == EXPECTED[version] | {"ip_offset": offset}
    assert packet.ip_packet == IP[version]


@pytest.mark.parametrize(("linktype", "version", "ppp_header", "offset"), [
    pytest.param(*case, id=case_id)
    for case, case_id in zip(LINK_CASES, LINK_IDS)])
def test_link_types_through_pcap(tmp_path: Path, linktype: int, version: int, ppp_header: bool,
                                 offset: int) -> None:
    """A pcap of each supported link type meters its request/reply as one flow."""
    request = link(linktype, IP[version], ppp_header=ppp_header)
    reply_ip = (ipv4(udp(53, 5353, b"abcdef"), UDP, src=B4, dst=A4, ttl=60) if version == 4 else
                ipv6(udp(53, 5353, b"abcdef"), UDP, src=B6, dst=A6, hlim=60))
    reply = link(linktype, reply_ip, ppp_header=ppp_header)
    path = write_pcap(tmp_path / "link.pcap", [(1_000, request), (1_250, reply)], linktype)
    stream = FlowStream(str(path))
    assert [(f.src_port, f.dst_port, f.protocol, f.ip_version, f.src2dst_packets,
             f.src2dst_bytes, f.dst2src_packets, f.dst2src_bytes, f.src2dst_max_ttl,
             f.dst2src_max_ttl, f.src2dst_tos, f.bidirectional_first_seen_ms,
             f.bidirectional_last_seen_ms, int(f.end_reason)) for f in stream] == [
        (5353, 53, UDP, version, 1, len(IP[version]), 1, len(reply_ip), 57, 60, 0x28, 1_000,
         1_250, 4)]
    assert (stream.stats.packets_read, stream.stats.packets_decoded, stream.stats.skipped) == (
        2, 2, Counter())


def test_unsupported_link_type_raises(tmp_path: Path) -> None:
    """A capture of an unsupported link type (147, user 0) is refused, naming the number."""
    path = write_pcap(tmp_path / "user0.pcap", [(1_000, UDP4)], 147)
    with pytest.raises(CaptureError, match=r"unsupported link type 147\b"):
        list(FlowStream(str(path)))
    with pytest.raises(CaptureError, match=r"unsupported link type 147\b"):
        Decoder(147)


# VLAN, QinQ, MPLS, PPPoE.

def ppp_proto(ip: bytes) -> int:
    """The PPP protocol number of an IP packet."""
    return PPP_IP if ip[0] >> 4 == 4 else PPP_IPV6


ENCAPSULATIONS = {  # name: (link type, frame builder, outer VLAN id, IP header offset)
    "802.1q": (1, lambda ip: link(1, ip, tags=((ETH_8021Q, 0x2064),)), 100, 18),
    "qinq-88a8": (1, lambda ip: link(1, ip, tags=((ETH_8021AD, 100), (ETH_8021Q, 200))), 100, 22),
    "qinq-9100": (1, lambda ip: link(1, ip, tags=((0x9100, 300), (ETH_8021Q, 200))), 300, 22),
    "mpls-1": (1, lambda ip: ether(mpls([16], ip), ETH_MPLS), 0, 18),
    "mpls-multicast": (1, lambda ip: ether(mpls([16], ip), 0x8848), 0, 18),
    "mpls-3": (1, lambda ip: ether(mpls([16, 17, 1_048_575], ip), ETH_MPLS), 0, 26),
    "vlan-mpls-3": (1, lambda ip: ether(mpls([16, 17, 18], ip), ETH_MPLS, ((ETH_8021Q, 5),)), 5,
                    30),
    "pppoe": (1, lambda ip: ether(pppoe(ip, ppp_proto(ip)), ETH_PPPOE), 0, 22),
    "vlan-pppoe": (1, lambda ip: ether(pppoe(ip, ppp_proto(ip)), ETH_PPPOE, ((ETH_8021Q, 42),)),
                   42, 26),
    "sll-vlan": (113, lambda ip: link(113, struct.pack("!HH", 7, ethertype_of(ip)) + ip,
                                      ETH_8021Q), 7, 20),
    "sll2-mpls": (276, lambda ip: link(276, mpls([99], ip), ETH_MPLS), 0, 24),
}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("name", list(ENCAPSULATIONS))
def test_encapsulations(name: str, version: int) -> None:
    """VLAN tags (outer id kept), MPLS stacks and PPPoE sessions lead to the IP header."""
    linktype, build, vlan_id, offset = ENCAPSULATIONS[name]
    packet = decode_one(linktype, build(IP[version]))
    assert fields(packet) == EXPECTED[version] | {"vlan_id": vlan_id, "ip_offset": offset}
    assert packet.ip_packet == IP[version]


# IPv4 and IPv6 variants and transports.

TRANSPORTS = [  # id, L4 bytes, protocol (IPv4, IPv6), expected ports, flags, ICMP type*256+code
    ("tcp-flags", tcp(40000, 443, SYN | ECE | CWR, b"12345"), (TCP, TCP), (40000, 443), 0xC2, 0),
    ("tcp-all-flags", tcp(1, 2, 0xFF), (TCP, TCP), (1, 2), 0xFF, 0),
    ("udp", udp(5353, 53, b"q"), (UDP, UDP), (5353, 53), 0, 0),
    ("sctp", sctp(36412, 38412, bytes(16)), (SCTP, SCTP), (36412, 38412), 0, 0),
    ("udplite", udp(7000, 7001), (136, 136), (7000, 7001), 0, 0),
    ("dccp", udp(5004, 5005, bytes(8)), (33, 33), (5004, 5005), 0, 0),
    ("icmp-echo", icmp(8, 0, b"ping"), (ICMP, ICMPV6), (0, 0), 0, 8 * 256),
    ("icmp-unreachable", icmp(3, 3, bytes(28)), (ICMP, ICMPV6), (0, 0), 0, 3 * 256 + 3),
    ("icmpv6-echo", icmp(128, 0), (ICMPV6, ICMPV6), (0, 0), 0, 128 * 256),
    ("gre-portless", bytes(12), (47, 47), (0, 0), 0, 0),
]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("l4", "protocols", "ports", "flags", "icmp_type_code"),
                         [case[1:] for case in TRANSPORTS], ids=[case[0] for case in TRANSPORTS])
def test_transports(version: int, l4: bytes, protocols: tuple[int, int], ports: tuple[int, int],
                    flags: int, icmp_type_code: int) -> None:
    """Ports, TCP flags and ICMP type/code of each transport, over IPv4 and IPv6."""
    protocol = protocols[version == 6]
    ip = (ipv4(l4, protocol, ttl=1, tos=0xB8) if version == 4
          else ipv6(l4, protocol, hlim=1, tclass=0xB8))
    packet = decode_one(1, link(1, ip))
    assert fields(packet) == EXPECTED[version] | {
        "src_port": ports[0], "dst_port": ports[1], "protocol": protocol, "ip_size": len(ip),
        "ttl": 1, "tos": 0xB8, "tcp_flags": flags, "icmp_type_code": icmp_type_code,
        "ip_offset": 14}


@pytest.mark.parametrize("linktype", [1, 101])
@pytest.mark.parametrize("options", [bytes(4), b"\x01\x01\x01\x00", bytes([7, 7, 4]) + bytes(5),
                                     bytes(40)], ids=["4-eol", "4-nop", "8-rr", "40-max"])
def test_ipv4_options(linktype: int, options: bytes) -> None:
    """IPv4 options (header length > 20) are stepped over to the transport header."""
    ip = ipv4(tcp(1234, 80, PSH | ACK, bytes(30)), TCP, options=options, ttl=128)
    packet = decode_one(linktype, link(linktype, ip))
    assert fields(packet) == EXPECTED[4] | {
        "src_port": 1234, "dst_port": 80, "protocol": TCP, "ip_size": 20 + len(options) + 50,
        "ttl": 128, "tos": 0, "tcp_flags": PSH | ACK, "ip_offset": 14 if linktype == 1 else 0}


EXTENSION_CHAINS = [  # id, ((kind, size), ...)
    ("hop-by-hop-8", ((HOP_BY_HOP, 8),)),
    ("hop-by-hop-16", ((HOP_BY_HOP, 16),)),
    ("routing-24", ((ROUTING, 24),)),
    ("dest-opts-16", ((DEST_OPTS, 16),)),
    ("mobility-8", ((135, 8),)),
    ("atomic-fragment", ((FRAGMENT, 8),)),
    ("hbh-routing-dest-fragment", ((HOP_BY_HOP, 8), (ROUTING, 24), (DEST_OPTS, 8), (FRAGMENT, 8))),
    ("ah-8-no-icv", ((AH, 8),)),  # 8 octets read the same in either unit
    ("ah-24", ((AH, 24),)),
    ("hbh-16-ah-24", ((HOP_BY_HOP, 16), (AH, 24))),
    ("routing-24-ah-8", ((ROUTING, 24), (AH, 8))),
]


@pytest.mark.parametrize(("chain", "protocol", "l4", "ports", "flags"), [
    pytest.param(chain, protocol, l4, ports, flags, id=f"{name}-{l4_name}")
    for name, chain in EXTENSION_CHAINS
    for l4_name, protocol, l4, ports, flags in (
        ("udp", UDP, udp(4500, 500, bytes(12)), (4500, 500), 0),
        ("tcp", TCP, tcp(22, 50000, ACK | FIN), (22, 50000), ACK | FIN))])
def test_ipv6_extension_headers(chain: tuple[tuple[int, int], ...], protocol: int, l4: bytes,
                                ports: tuple[int, int], flags: int) -> None:
    """Extension headers are walked to the transport header; ip_size stays the IPv6 size."""
    ip = ipv6(l4, protocol, ext=chain, hlim=9, tclass=0x04)
    packet = decode_one(276, link(276, ip))
    assert fields(packet) == EXPECTED[6] | {
        "src_port": ports[0], "dst_port": ports[1], "protocol": protocol, "ip_size": len(ip),
        "ttl": 9, "tos": 0x04, "tcp_flags": flags, "ip_offset": 20}


@pytest.mark.parametrize("after", [(DEST_OPTS, 8), (AH, 8)], ids=["dest-opts", "ah"])
def test_ipv6_first_fragment_with_header_after_fragment(after: tuple[int, int]) -> None:
    """A first fragment whose fragmentable part starts with an extension header keeps its ports."""
    ip = ipv6(udp(4500, 500, bytes(32)), UDP, ext=((FRAGMENT, 8), after), fragment=(0, 1, 7))
    packet = decode_one(1, link(1, ip))
    assert (packet.protocol, packet.src_port, packet.dst_port) == (UDP, 4500, 500)


SIZE_CASES = [  # id, IP packet, frame suffix (padding) or cut, expected ip_size
    ("ipv4-ethernet-padding", ipv4(udp(1, 2), UDP), bytes(18), 28),
    ("ipv4-snaplen-cut", ipv4(udp(1, 2, bytes(1472)), UDP), -1472, 1500),
    ("ipv4-total-length-0", ipv4(udp(1, 2, bytes(10)), UDP, total_length=0), b"", 38),
    ("ipv6-snaplen-cut", ipv6(udp(1, 2, bytes(1452)), UDP), -1452, 1500),
    ("ipv6-payload-length-0", ipv6(udp(1, 2, bytes(10)), UDP, payload_length=0), b"", 58),
]


@pytest.mark.parametrize(("ip", "change", "size"), [case[1:] for case in SIZE_CASES],
                         ids=[case[0] for case in SIZE_CASES])
def test_ip_size_is_total_length(ip: bytes, change: bytes | int, size: int) -> None:
    """ip_size is the IP header's length field, not the captured length (0: the frame's)."""
    frame = link(1, ip)
    frame = frame + change if isinstance(change, bytes) else frame[:change]
    packet = decode_one(1, frame)
    assert (packet.ip_size, packet.src_port, packet.dst_port, packet.protocol) == (size, 1, 2, UDP)


# Fragments.

FRAGMENT_L4 = {  # protocol: (48 bytes of transport, ports, TCP flags, ICMP type/code) per version
    UDP: lambda v: (udp(5000, 6000, bytes(40)), UDP, (5000, 6000), 0, 0),
    TCP: lambda v: (tcp(40000, 80, SYN | URG, bytes(28)), TCP, (40000, 80), SYN | URG, 0),
    ICMP: lambda v: (icmp(8 if v == 4 else 128, 0, bytes(40)), ICMP if v == 4 else ICMPV6, (0, 0),
                     0, (8 if v == 4 else 128) * 256),
}


def fragments(version: int, l4: bytes, protocol: int, ident: int, last_src_byte: int = 1,
              cuts: tuple[int, ...] = (0, 24, 40, 48)) -> list[bytes]:
    """`l4` cut at `cuts` into IP fragments of datagram `ident` (offsets in 8-octet units)."""
    packets = []
    for start, end in zip(cuts, cuts[1:]):
        more = int(end < cuts[-1])
        if version == 4:
            packets.append(ipv4(l4[start:end], protocol, src=A4[:3] + bytes([last_src_byte]),
                                ident=ident, frag=more << 13 | start // 8))
        else:
            packets.append(ipv6(l4[start:end], protocol, src=A6[:15] + bytes([last_src_byte]),
                                ext=((FRAGMENT, 8),), fragment=(start // 8, more, ident)))
    return packets


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", [UDP, TCP, ICMP], ids=["udp", "tcp", "icmp"])
def test_fragments_share_the_first_fragments_ports(version: int, kind: int) -> None:
    """Later fragments take the first one's ports and ICMP type; an orphan gets ports 0."""
    l4, protocol, ports, flags, type_code = FRAGMENT_L4[kind](version)
    datagram = fragments(version, l4, protocol, 0x4242)
    orphan = fragments(version, l4, protocol, 0x4242, 3)[1]  # its first fragment never comes
    decoder = Decoder(1)
    frames = [link(1, ip) for ip in [*datagram, orphan]]
    packets = [decoder.decode(1_000 + 10 * i, frame) for i, frame in enumerate(frames)]
    header = 20 if version == 4 else 48
    assert [(p.src_port, p.dst_port, p.protocol, p.tcp_flags, p.icmp_type_code, p.ip_size)
            for p in packets] == [
        (*ports, protocol, flags, type_code, header + 24),
        (*ports, protocol, 0, type_code, header + 16),
        (*ports, protocol, 0, type_code, header + 8),
        (0, 0, protocol, 0, 0, header + 16)]
    assert decoder.skipped == Counter()
    cache = FlowCache()
    for packet in packets:
        cache.add(packet)
    cache.drain()
    assert [(f.src_port, f.dst_port, f.bidirectional_packets, f.bidirectional_bytes)
            for f in cache.expired] == [(*ports, 3, 3 * header + 48), (0, 0, 1, header + 16)]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("delay", "ports"), [(30_000, (5000, 6000)), (30_001, (0, 0))])
def test_fragment_memory_times_out(version: int, delay: int, ports: tuple[int, int]) -> None:
    """A datagram's ports are remembered for 30 s of packet time after its first fragment."""
    first, second, _ = fragments(version, udp(5000, 6000, bytes(40)), UDP, 9)
    decoder = Decoder(101)
    decoder.decode(1_000, first)
    packet = decoder.decode(1_000 + delay, second)
    assert packet is not None and (packet.src_port, packet.dst_port) == ports


@pytest.mark.parametrize("version", [4, 6])
def test_fragment_memory_is_released(version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last fragment forgets its datagram; a full table forgets the oldest datagram."""
    monkeypatch.setattr(decode_module, "FRAGMENT_TABLE_SIZE", 2)
    l4 = udp(5000, 6000, bytes(40))
    datagrams = {ident: fragments(version, l4, UDP, ident) for ident in (1, 2, 3, 4)}
    decoder = Decoder(101)
    order = [(1, 0), (1, 2), (1, 1),  # the last fragment before the middle one
             (2, 0), (3, 0), (4, 0),  # three first fragments in a table of two: 2 goes
             (2, 1), (3, 1), (4, 2), (4, 1)]
    ports = [(p.src_port, p.dst_port) for p in (decoder.decode(1_000, datagrams[ident][index])
                                                for ident, index in order)]
    portless, known = (0, 0), (5000, 6000)
    assert ports == [known, known, portless, known, known, known, portless, known, known, portless]


@pytest.mark.parametrize("frag", [0x4000, 0x2000, 0x0001, 0x6000],
                         ids=["df", "mf", "offset", "df-mf"])
def test_ipv4_fragment_flags(frag: int) -> None:
    """DF alone is no fragment; MF or an offset is (a later one without its first: ports 0)."""
    frame = link(1, ipv4(tcp(1, 2, ACK, bytes(20)), TCP, frag=frag))
    packet = decode_one(1, frame)
    fragmented_later = frag & 0x1FFF != 0
    assert (packet.src_port, packet.dst_port, packet.tcp_flags) == (
        (0, 0, 0) if fragmented_later else (1, 2, ACK))


def test_first_fragment_with_truncated_transport_is_not_remembered() -> None:
    """A first fragment too short for its TCP header is skipped; its followers are portless."""
    first = ipv4(tcp(1, 2)[:12], TCP, ident=5, frag=0x2000)
    second = ipv4(bytes(16), TCP, ident=5, frag=0x2000 | 1)
    decoder = Decoder(1)
    packets = [decoder.decode(1_000, link(1, ip)) for ip in (first, second)]
    assert packets[0] is None
    assert (packets[1].src_port, packets[1].dst_port, packets[1].ip_size) == (0, 0, 36)
    assert (decoder.skipped, decoder.skipped_octets) == (Counter({TRUNCATED_TRANSPORT: 1}), 14 + 32)


# Skipped frames.

SKIPS = [  # id, linktype, frame, reason
    ("ethernet-13", 1, link(1, UDP4)[:13], TRUNCATED_LINK),
    ("sll-15", 113, link(113, UDP4)[:15], TRUNCATED_LINK),
    ("sll2-19", 276, link(276, UDP4)[:19], TRUNCATED_LINK),
    ("null-4", 0, link(0, UDP4)[:4], TRUNCATED_LINK),
    ("loop-4", 108, link(108, UDP4)[:4], TRUNCATED_LINK),
    ("ppp-ff03-3", 9, link(9, UDP4)[:3], TRUNCATED_LINK),
    ("ppp-1", 9, link(9, UDP4, ppp_header=False)[:1], TRUNCATED_LINK),
    ("c-hdlc-3", 104, link(104, UDP4)[:3], TRUNCATED_LINK),
    ("vlan-tag-cut", 1, link(1, UDP4, tags=((ETH_8021Q, 5),))[:17], TRUNCATED_LINK),
    ("mpls-no-bottom", 1, ether(bytes.fromhex("00010040"), ETH_MPLS), TRUNCATED_LINK),
    ("pppoe-cut", 1, ether(pppoe(UDP4)[:7], ETH_PPPOE), TRUNCATED_LINK),
    ("arp", 1, ether(bytes(28), ETH_ARP), NOT_IP),
    ("802.3-length", 1, ether(bytes(46), 46), NOT_IP),
    ("vlan-arp", 1, ether(bytes(28), ETH_ARP, ((ETH_8021Q, 5),)), NOT_IP),
    ("sll-arp", 113, link(113, bytes(28), ETH_ARP), NOT_IP),
    ("sll2-arp", 276, link(276, bytes(28), ETH_ARP), NOT_IP),
    ("ppp-lcp", 9, link(9, bytes(8), PPP_LCP), NOT_IP),
    ("pppoe-lcp", 1, ether(pppoe(bytes(8), PPP_LCP), ETH_PPPOE), NOT_IP),
    ("c-hdlc-slarp", 104, link(104, bytes(20), 0x8035), NOT_IP),
    ("raw-empty", 101, b"", TRUNCATED_IP),
    ("ipv4-19", 1, link(1, UDP4[:19]), TRUNCATED_IP),
    ("ipv6-39", 1, link(1, UDP6[:39]), TRUNCATED_IP),
    ("sll-ipv4-19", 113, link(113, UDP4[:19]), TRUNCATED_IP),
    ("mpls-then-nothing", 1, ether(mpls([16], b""), ETH_MPLS), TRUNCATED_IP),
    ("ipv6-extension-cut", 101, ipv6(b"", HOP_BY_HOP), TRUNCATED_IP),
    ("ipv6-second-extension-cut", 101, ipv6(b"", DEST_OPTS, ext=((ROUTING, 8),)), TRUNCATED_IP),
    ("ipv6-fragment-cut", 101, ipv6(bytes(7), FRAGMENT), TRUNCATED_IP),
    ("raw-version-5", 101, b"\x55" + UDP4[1:], BAD_IP_VERSION),
    ("ethernet-version-5", 1, link(1, b"\x55" + UDP4[1:] + bytes(30), ETH_IP), BAD_IP_VERSION),
    ("null-version-0", 0, link(0, bytes(30), ETH_IP), BAD_IP_VERSION),
    ("ihl-4", 1, link(1, ipv4(udp(1, 2), UDP, ver_ihl=0x44)), BAD_IP_HEADER),
    ("ihl-4-long", 1, link(1, ipv4(tcp(1, 2), TCP, ver_ihl=0x44)), BAD_IP_HEADER),
    ("ihl-15-cut", 1, link(1, ipv4(udp(1, 2), UDP, ver_ihl=0x4F)), BAD_IP_HEADER),
    ("total-length-19", 1, link(1, ipv4(udp(1, 2), UDP, total_length=19)), BAD_IP_LENGTH),
    ("total-length-19-long", 1, link(1, ipv4(tcp(1, 2), TCP, total_length=19)), BAD_IP_LENGTH),
    ("total-length-23-options", 1, link(1, ipv4(udp(1, 2), UDP, options=bytes(4),
                                                total_length=23)), BAD_IP_LENGTH),
    ("tcp-13", 1, link(1, ipv4(tcp(1, 2)[:13], TCP)), TRUNCATED_TRANSPORT),
    ("udp-3", 1, link(1, ipv4(udp(1, 2)[:3], UDP)), TRUNCATED_TRANSPORT),
    ("sctp-3", 1, link(1, ipv4(sctp(1, 2)[:3], SCTP)), TRUNCATED_TRANSPORT),
    ("icmp-1", 1, link(1, ipv4(icmp(8, 0)[:1], ICMP)), TRUNCATED_TRANSPORT),
    ("icmpv6-1", 101, ipv6(icmp(128, 0)[:1], ICMPV6), TRUNCATED_TRANSPORT),
    ("ipv6-dest-opts-tcp-13", 101, ipv6(tcp(1, 2)[:13], TCP, ext=((DEST_OPTS, 8),)),
     TRUNCATED_TRANSPORT),
    ("first-fragment-udp-3", 1, link(1, ipv4(udp(1, 2)[:3], UDP, frag=0x2000)),
     TRUNCATED_TRANSPORT),
]


@pytest.mark.parametrize(("linktype", "frame", "reason"), [case[1:] for case in SKIPS],
                         ids=[case[0] for case in SKIPS])
def test_skip_reasons(linktype: int, frame: bytes, reason: str) -> None:
    """Each undecodable frame is counted once under its reason, with its length in octets."""
    decoder = Decoder(linktype)
    assert decoder.decode(1_000, frame) is None
    assert (decoder.skipped, decoder.skipped_octets) == (Counter({reason: 1}), len(frame))


@pytest.mark.parametrize("linktype", sorted({case[1] for case in SKIPS}))
def test_skips_through_pcap(tmp_path: Path, linktype: int) -> None:
    """A capture mixing skipped frames with good ones: exact skip counts, octets, conservation."""
    bad = [(case[2], case[3]) for case in SKIPS if case[1] == linktype]
    good4, good6 = link(linktype, UDP4), link(linktype, UDP6)
    frames = [good4, *(frame for frame, _ in bad), good4, good6]
    path = write_pcap(tmp_path / "skips.pcap", [(1_000 + i, f) for i, f in enumerate(frames)],
                      linktype)
    stream = FlowStream(str(path))
    flows = list(stream)
    stats = stream.stats
    assert stats.skipped == Counter(reason for _, reason in bad)
    assert stats.skipped_octets == sum(len(frame) for frame, _ in bad)
    assert (stats.packets_read, stats.packets_decoded) == (len(bad) + 3, 3)
    assert [(f.ip_version, f.bidirectional_packets, f.bidirectional_bytes) for f in flows] == [
        (4, 2, 2 * len(UDP4)), (6, 1, len(UDP6))]


@pytest.mark.parametrize("after", [(DEST_OPTS, 8), (AH, 8)], ids=["dest-opts", "ah"])
def test_ipv6_later_fragment_joins_first_with_header_after_fragment(after: tuple[int, int]) -> None:
    """Fragments are matched on the Fragment header's next header, which every fragment names."""
    decoder = Decoder(1)
    first = ipv6(udp(4500, 500, bytes(32)), UDP, ext=((FRAGMENT, 8), after), fragment=(0, 1, 7))
    later = ipv6(bytes(24), after[0], ext=((FRAGMENT, 8),), fragment=(6, 0, 7))
    packets = [decoder.decode(1_000, link(1, ip)) for ip in (first, later)]
    assert [(p.protocol, p.src_port, p.dst_port, p.ip_size) for p in packets] == [
        (UDP, 4500, 500, len(first)), (UDP, 4500, 500, len(later))]


def test_transport_header_in_link_padding_is_truncated() -> None:
    """A TCP header cut by the IP total length is not read from the Ethernet padding after it."""
    decoder = Decoder(1)
    ip = ipv4(tcp(1000, 80, ACK), TCP, total_length=24)[:24]
    frame = link(1, ip) + b"\xaa" * 36
    assert decoder.decode(1_000, frame) is None
    assert decoder.skipped == Counter({"truncated transport header": 1})


# The link layer a flow direction keeps (Decoder.link_header), read only when asked.

def entry(label: int, tc: int, bottom: int) -> bytes:
    """An MPLS label stack entry less its TTL: label, traffic class, bottom of stack."""
    return (label << 4 | tc << 1 | bottom).to_bytes(3, "big")


def tc_mpls(entries: list[tuple[int, int]], payload: bytes) -> bytes:
    """A label stack of (label, traffic class) entries, bottom of stack on the last; TTL 64."""
    return b"".join(struct.pack("!I", label << 12 | tc << 9 | (i == len(entries) - 1) << 8 | 64)
                    for i, (label, tc) in enumerate(entries)) + payload


NO_MAC = bytes(6)
LINK_HEADERS = {  # name: link type, frame, (source MAC, destination MAC, MPLS label entries)
    "ethernet": (1, link(1, UDP4), (MAC_A, MAC_B, ())),
    "ethernet-vlan-fast": (1, link(1, UDP4, tags=((ETH_8021Q, 5),)), (MAC_A, MAC_B, ())),
    "mpls-3": (1, ether(tc_mpls([(16, 0), (1_048_575, 7), (300, 5)], UDP4), ETH_MPLS),
               (MAC_A, MAC_B, (entry(16, 0, 0), entry(1_048_575, 7, 0), entry(300, 5, 1)))),
    "vlan-mpls": (1, ether(mpls([18], UDP6), ETH_MPLS, ((ETH_8021Q, 5),)),
                  (MAC_A, MAC_B, (entry(18, 0, 1),))),
    "mpls-12": (1, ether(mpls(list(range(100, 112)), UDP4), ETH_MPLS),
                (MAC_A, MAC_B, tuple(entry(label, 0, 0) for label in range(100, 110)))),
    "sll": (113, link(113, UDP4), (MAC_A, NO_MAC, ())),
    "sll-no-address": (113, struct.pack("!HHH8sH", 0, 772, 0, bytes(8), ETH_IP) + UDP4,
                       (NO_MAC, NO_MAC, ())),
    "sll2-mpls": (276, link(276, mpls([99], UDP4), ETH_MPLS), (MAC_A, NO_MAC, (entry(99, 0, 1),))),
    "raw": (101, UDP4, (NO_MAC, NO_MAC, ())),
    "c-hdlc-mpls": (104, link(104, mpls([77], UDP4), ETH_MPLS), (NO_MAC, NO_MAC,
                                                                 (entry(77, 0, 1),))),
}


@pytest.mark.parametrize("name", list(LINK_HEADERS))
def test_link_header_of_each_link_type(name: str) -> None:
    """The MAC addresses (Ethernet's two, Linux cooked captures' sender's) and at most ten MPLS
    label stack entries, top first, of the frame just decoded."""
    linktype, frame, (src_mac, dst_mac, labels) = LINK_HEADERS[name]
    decoder = Decoder(linktype)
    assert decoder.decode(1, frame) is not None
    assert decoder.link_header(frame) == dst_mac + src_mac + b"".join(labels)


def test_link_header_labels_are_the_frames_own() -> None:
    """A frame without MPLS after one with it has no labels; a tunnel's are its outer frame's."""
    decoder = TunnelDecoder(1)
    labelled = ether(mpls([40], UDP4), ETH_MPLS)
    plain = link(1, ipv4(tcp(1, 2, ACK), TCP))
    inner = ether(mpls([41], UDP4), ETH_MPLS)
    vxlan = ether(mpls([42], ipv4(udp(40000, 4789, bytes.fromhex("0800000000abcd00") + inner),
                                  UDP)), ETH_MPLS)
    assert decoder.decode(1, labelled) is not None
    assert decoder.parse(plain)
    assert decoder.link_header(plain) == MAC_B + MAC_A
    packet = decoder.decode(2, vxlan)
    assert (packet.tunnel_id, packet.src_port) == (0xABCD, 5353)
    assert decoder.link_header(vxlan) == MAC_B + MAC_A + entry(42, 0, 1)
