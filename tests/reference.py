"""An independent reference counter for the meter: per unidirectional 5-tuple packets and bytes.

Written apart from the hot path (`pyprobe.decode`): frames are read with dpkt's own readers and
every header is a dpkt object, walked layer by layer, instead of `struct` formats on the frame.
It follows the meter's documented rules (see the `pyprobe.decode` docstring):

- the key is (src, dst, src_port, dst_port, protocol, vlan) of each packet, one direction;
- bytes are the IP total length (IPv6: payload length + 40; 0 means "the frame is the datagram");
- the VLAN id is the outer 802.1Q/802.1ad tag's (the first tag with a non-zero id: a priority
  tag, id 0, names no VLAN);
- ICMP and ICMPv6, and protocols without ports, have ports 0;
- a non-first IP fragment takes the ports of its datagram's first fragment, keyed by
  (src, dst, protocol, IP id), if that was seen within `FRAGMENT_TIMEOUT_S`, else ports 0;
- the link layer names the IP version (Ethernet type, SLL protocol, PPP protocol...); raw IP,
  loopback and MPLS leave it to the header's version nibble. A mismatch is a bad IP version;
- frames without an IP header, or whose IP or transport header (the fields the key needs) is
  not in the captured part of the datagram, are skipped and counted by reason. Octets past the
  IP total length (Ethernet padding) are not part of the datagram.

The fragment timeout is checked on float seconds, the meter's on integer ms: they could part
only for a fragment exactly 30 s after its first, which no shared capture has.
"""
from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import dpkt
import dpkt.ethernet
import dpkt.ip
import dpkt.ip6
import dpkt.loopback
import dpkt.pcap
import dpkt.pcapng
import dpkt.ppp
import dpkt.pppoe
import dpkt.sll

try:  # dpkt >= 1.9.8
    import dpkt.sll2 as _sll2
except ImportError:  # pragma: no cover - older dpkt
    _sll2 = None

FlowKey = tuple[bytes, bytes, int, int, int, int]
"""(src address, dst address, src port, dst port, IP protocol, VLAN id), one direction."""

FRAGMENT_TIMEOUT_S = 30.0  # a first fragment's ports are remembered this long (packet time)
PORTED_PROTOCOLS = {6, 17, 33, 132, 136}  # TCP, UDP, DCCP, SCTP, UDP-Lite: headers open with ports
KEY_OCTETS = {6: 14, 17: 4, 33: 4, 132: 4, 136: 4, 1: 2, 58: 2}
"""Transport octets a metered packet must have captured: the ports (TCP: up to its flags, octet
13), or ICMP's type and code. Fewer is a truncated transport header; other protocols need none."""
IPV6_OPTION_HEADERS = {0, 43, 60, 135, 139, 140}  # (len + 1) * 8 octets; AH (51) is apart
VLAN_ETHERTYPES = {0x8100, 0x88A8, 0x9100}
MPLS_ETHERTYPES = {0x8847, 0x8848}
ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_PPPOE = 0x0800, 0x86DD, 0x8864
PPP_PROTOCOLS = {0x0021: ETHERTYPE_IPV4, 0x0057: ETHERTYPE_IPV6}
BY_NIBBLE = -1  # "the IP version is in the first nibble" (raw IP, loopback, after MPLS)


class CiscoHDLC(dpkt.Packet):
    """Cisco HDLC framing (LINKTYPE_C_HDLC), which dpkt has no class for."""

    __hdr__ = (("addr", "B", 0x0F), ("ctrl", "B", 0), ("type", "H", ETHERTYPE_IPV4))


class TransportPorts(dpkt.Packet):
    """The source and destination ports that open a TCP, UDP, DCCP, SCTP or UDP-Lite header."""

    __hdr__ = (("sport", "H", 0), ("dport", "H", 0))


class IP6GenericExtension(dpkt.Packet):
    """The common start of an IPv6 extension header sized in 8-octet units."""

    __hdr__ = (("nxt", "B", 0), ("len", "B", 0))


class Skip(Exception):
    """The frame is not metered; the argument says why."""


def header(cls: type[dpkt.Packet], buf: bytes, offset: int = 0,
           why: str = "truncated") -> dpkt.Packet:
    """The fixed header of dpkt class `cls` at buf[offset:], without decoding what follows."""
    end = offset + cls.__hdr_len__
    if len(buf) < end:
        raise Skip(why)
    obj = cls.__new__(cls)
    dpkt.Packet.unpack(obj, buf[offset:end])
    return obj


@dataclass
class Reference:
    """What the reference counted in one capture."""

    linktype: int = 0
    frames: int = 0
    totals: dict[FlowKey, list[int]] = field(default_factory=dict)
    """key -> [packets, bytes]"""
    skipped: Counter = field(default_factory=Counter)

    @property
    def packets(self) -> int:
        return sum(p for p, _ in self.totals.values())


def read_frames(path: Path) -> tuple[int, Iterator[tuple[float, bytes]]]:
    """(link type, (time in s, frame) of each record) of a pcap or pcapng file, whatever its name
    says. A last record cut short by the end of the file is handed out with the octets there are,
    as libpcap and tshark do; reading stops at a cut record or block header."""
    fh: BinaryIO = open(path, "rb")
    try:
        reader: dpkt.pcap.Reader | dpkt.pcapng.Reader = dpkt.pcap.Reader(fh)
    except ValueError:
        fh.seek(0)
        try:
            reader = dpkt.pcapng.Reader(fh)
        except BaseException:
            fh.close()
            raise
    # The upper bits of a pcap header's link type field hold FCS information (LT_LINKTYPE).
    linktype = reader.datalink() & 0x03FFFFFF

    def frames() -> Iterator[tuple[float, bytes]]:
        with fh:
            try:
                for ts, frame in reader:
                    yield float(ts), frame
            except (dpkt.NeedData, dpkt.UnpackError, struct.error):
                return
    return linktype, frames()


class ReferenceCounter:
    """Counts one capture's IP packets and bytes per unidirectional 5-tuple."""

    def __init__(self, linktype: int) -> None:
        self.linktype = linktype
        self.fragments: dict[tuple, tuple[float, int, int, int]] = {}

    # Link layers: each returns (ethertype or BY_NIBBLE, network bytes, vlan id).

    def link(self, frame: bytes) -> tuple[int, bytes, int]:
        lt = self.linktype
        if lt == 1:
            eth = header(dpkt.ethernet.Ethernet, frame, why="link")
            return self.ethertype(eth.type, frame[eth.__hdr_len__:])
        if lt == 113:
            sll = header(dpkt.sll.SLL, frame, why="link")
            return self.ethertype(sll.ethtype, frame[sll.__hdr_len__:])
        if lt == 276 and _sll2 is not None:
            sll2 = header(_sll2.SLL2, frame, why="link")
            return self.ethertype(sll2.ethtype, frame[sll2.__hdr_len__:])
        if lt in (0, 108):
            lo = header(dpkt.loopback.Loopback, frame, why="link")
            return BY_NIBBLE, frame[lo.__hdr_len__:], 0
        if lt in (101, 12, 14):  # LINKTYPE_RAW, and the DLT_RAW numbers some files carry
            return BY_NIBBLE, frame, 0
        if lt == 228:
            return ETHERTYPE_IPV4, frame, 0
        if lt == 229:
            return ETHERTYPE_IPV6, frame, 0
        if lt == 9:
            return self.ppp(frame)
        if lt == 104:
            hdlc = header(CiscoHDLC, frame, why="link")
            return self.ethertype(hdlc.type, frame[hdlc.__hdr_len__:])
        raise ValueError(f"link type {lt} not handled by the reference")

    def ppp(self, buf: bytes) -> tuple[int, bytes, int]:
        """PPP in HDLC-like framing; address and control may be compressed away, and so may the
        protocol field (one octet when odd, RFC 1661 §6.5), both of which dpkt's PPP reads."""
        if buf[:2] != b"\xff\x03":
            buf = b"\xff\x03" + buf
        try:
            ppp = dpkt.ppp.PPP(buf[:4])  # four octets at most: nothing to decode behind them
        except dpkt.UnpackError:  # NeedData included: the protocol field is cut
            raise Skip("link") from None
        inner = PPP_PROTOCOLS.get(ppp.p)
        if inner is None:
            raise Skip("not IP")
        return inner, buf[3 if buf[2] & 1 else 4:], 0

    def ethertype(self, ethertype: int, buf: bytes, vlan: int = 0) -> tuple[int, bytes, int]:
        """Peels VLAN tags, an MPLS stack or a PPPoE session off, down to IP."""
        if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            return ethertype, buf, vlan
        if ethertype in VLAN_ETHERTYPES:
            tag = header(dpkt.ethernet.VLANtag8021Q, buf, why="link")
            return self.ethertype(tag.type, buf[tag.__hdr_len__:], vlan or tag.id)
        if ethertype in MPLS_ETHERTYPES:
            while True:
                label = header(dpkt.ethernet.MPLSlabel, buf, why="link")
                buf = buf[label.__hdr_len__:]
                if label.s:
                    return BY_NIBBLE, buf, vlan
        if ethertype == ETHERTYPE_PPPOE:
            session = header(dpkt.pppoe.PPPoE, buf, why="link")
            rest = buf[session.__hdr_len__:]
            if len(rest) < 2:
                raise Skip("link")
            inner = PPP_PROTOCOLS.get(int.from_bytes(rest[:2], "big"))
            if inner is None:
                raise Skip("not IP")
            return inner, rest[2:], vlan
        raise Skip("not IP")

    # Network and transport layers.

    def packet(self, ts: float, frame: bytes) -> tuple[FlowKey, int]:
        """The key and IP byte count of one frame, or Skip."""
        ethertype, net, vlan = self.link(frame)
        if not net:
            raise Skip("truncated IP")
        version = net[0] >> 4
        if ethertype == BY_NIBBLE:
            ethertype = {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(version, 0)
        if ethertype == ETHERTYPE_IPV4 and version == 4:
            return self.ipv4(ts, net, vlan)
        if ethertype == ETHERTYPE_IPV6 and version == 6:
            return self.ipv6(ts, net, vlan)
        raise Skip("bad IP version")

    def ipv4(self, ts: float, net: bytes, vlan: int) -> tuple[FlowKey, int]:
        ip = header(dpkt.ip.IP, net, why="truncated IP")
        if ip.hl < 5 or len(net) < ip.hl * 4:
            raise Skip("bad IP header")
        if 0 < ip.len < ip.hl * 4:
            raise Skip("bad IP length")
        size = ip.len or len(net)
        l4 = net[ip.hl * 4:size]  # octets past the total length (Ethernet padding) are not IP
        if ip.offset or ip.mf:
            return self.fragment(ts, ip.src, ip.dst, ip.p, ip.id, ip.offset, ip.mf, l4, size, vlan)
        return self.transport(ip.src, ip.dst, ip.p, l4, size, vlan)

    def ipv6(self, ts: float, net: bytes, vlan: int) -> tuple[FlowKey, int]:
        """Extension headers are walked to the upper-layer protocol, past a first fragment's
        Fragment header too; behind a later fragment's there is only payload."""
        ip6 = header(dpkt.ip6.IP6, net, why="truncated IP")
        size = ip6.plen + 40 if ip6.plen else len(net)
        nxt, rest = ip6.nxt, net[ip6.__hdr_len__:size]
        frag: dpkt.ip6.IP6FragmentHeader | None = None
        while True:
            if nxt in IPV6_OPTION_HEADERS:
                ext = header(IP6GenericExtension, rest, why="truncated IP")
                nxt, rest = ext.nxt, rest[(ext.len + 1) * 8:]
            elif nxt == 51:
                ah = header(IP6GenericExtension, rest, why="truncated IP")
                nxt, rest = ah.nxt, rest[(ah.len + 2) * 4:]
            elif nxt == 44:
                frag = header(dpkt.ip6.IP6FragmentHeader, rest, why="truncated IP")
                nxt, rest = frag.nxt, rest[frag.__hdr_len__:]
                if frag.frag_off:
                    break
            else:
                break
        if frag is not None:
            return self.fragment(ts, ip6.src, ip6.dst, nxt, frag.id, frag.frag_off, frag.m_flag,
                                 rest, size, vlan, frag.nxt)
        return self.transport(ip6.src, ip6.dst, nxt, rest, size, vlan)

    def fragment(self, ts: float, src: bytes, dst: bytes, protocol: int, ip_id: int,
                 offset: int, more: int, l4: bytes, size: int, vlan: int,
                 datagram_protocol: int | None = None) -> tuple[FlowKey, int]:
        """A fragment. The datagram is named by (src, dst, protocol, IP id), its protocol being
        the one every fragment carries: IPv4's, or the IPv6 Fragment header's Next Header
        (`datagram_protocol`, when headers such as Destination Options follow it in the first
        fragment). Later fragments take the first one's upper-layer protocol and ports."""
        datagram = (src, dst, protocol if datagram_protocol is None else datagram_protocol, ip_id)
        if offset == 0:
            key, size = self.transport(src, dst, protocol, l4, size, vlan)
            if more:
                self.fragments[datagram] = (ts, key[2], key[3], protocol)
            return key, size
        first = self.fragments.get(datagram)
        if first is not None and ts - first[0] <= FRAGMENT_TIMEOUT_S:
            return (src, dst, first[1], first[2], first[3], vlan), size
        return (src, dst, 0, 0, protocol, vlan), size

    def transport(self, src: bytes, dst: bytes, protocol: int, l4: bytes, size: int,
                  vlan: int) -> tuple[FlowKey, int]:
        if len(l4) < KEY_OCTETS.get(protocol, 0):
            raise Skip("truncated transport")
        if protocol in PORTED_PROTOCOLS:
            ports = header(TransportPorts, l4)
            return (src, dst, ports.sport, ports.dport, protocol, vlan), size
        return (src, dst, 0, 0, protocol, vlan), size


def count(path: Path) -> Reference:
    """Runs the reference counter over a capture file."""
    linktype, frames = read_frames(path)
    counter = ReferenceCounter(linktype)
    ref = Reference(linktype=linktype)
    for ts, frame in frames:
        ref.frames += 1
        try:
            key, size = counter.packet(ts, frame)
        except Skip as skip:
            ref.skipped[skip.args[0]] += 1
            continue
        entry = ref.totals.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += size
    return ref


def format_key(key: FlowKey) -> str:
    """A readable 5-tuple."""
    src, dst, sport, dport, proto, vlan = key
    def endpoint(addr: bytes, port: int) -> str:
        if len(addr) == 4:
            return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
        return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
    return f"{proto} {endpoint(src, sport)} -> {endpoint(dst, dport)} vlan {vlan}"
