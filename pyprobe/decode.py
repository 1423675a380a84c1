"""Frame decoding: link layer, VLAN/MPLS/PPPoE, IPv4/IPv6 and the transport ports, into a `Packet`.

Headers are precompiled `struct` formats read in place with `unpack_from`; no per-layer objects.
A frame that cannot be decoded is counted under a reason (`Decoder.skipped`) and yields None.

IP fragments are metered without reassembly. The first fragment of a datagram carries the ports;
they are remembered by (src, dst, protocol, IP id) so the later fragments join the same flow.
A non-first fragment whose first fragment was not seen (lost, reordered, or forgotten) is a
portless packet of its own flow (ports 0). A remembered datagram is forgotten after
`FRAGMENT_TIMEOUT_MS` of packet time (Linux's default reassembly timeout) or, beyond
`FRAGMENT_TABLE_SIZE` datagrams in flight, oldest first.

Tunnels are metered as their outer packet here; `tunnel.TunnelDecoder` opens them.

Ethernet frames of the common shapes take a fast path that reads them in one go; where pyprobe
was compiled (decode.pxd), it reads the frame's octets in place.

>>> import dpkt
>>> frame = bytes(dpkt.ethernet.Ethernet(type=0x0800, data=dpkt.ip.IP(src=bytes([10, 0, 0, 1]),
...     dst=bytes([10, 0, 0, 2]), p=17, data=dpkt.udp.UDP(sport=5353, dport=53, data=b"x"))))
>>> packet = Decoder(1).decode(1000, frame)
>>> packet.src_port, packet.dst_port, packet.protocol, packet.ip_size
(5353, 53, 17, 29)
"""
from __future__ import annotations

import struct
from collections import Counter, OrderedDict

from .errors import CaptureError
from .flow import MPLS_LABELS, Packet

# Link-layer types (LINKTYPE_* / DLT_* numbers) this decoder reads.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family, host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101  # bare IPv4 or IPv6
LINKTYPE_C_HDLC = 104  # Cisco HDLC
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_NAMES = {
    LINKTYPE_NULL: "NULL", LINKTYPE_ETHERNET: "EN10MB", LINKTYPE_PPP: "PPP", LINKTYPE_RAW: "RAW",
    LINKTYPE_C_HDLC: "C_HDLC", LINKTYPE_LOOP: "LOOP", LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4", LINKTYPE_IPV6: "IPV6", LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100  # customer VLAN tag
ETH_P_8021AD = 0x88A8  # service VLAN tag (QinQ outer)
ETH_P_QINQ_OLD = 0x9100  # pre-802.1ad QinQ outer tag
ETH_P_MPLS_UC = 0x8847
ETH_P_MPLS_MC = 0x8848
ETH_P_PPP_SES = 0x8864  # PPPoE session stage
PPP_IP = 0x0021
PPP_IPV6 = 0x0057
VLAN_TPIDS = frozenset((ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_OLD))
PPP_TO_ETHERTYPE = {PPP_IP: ETH_P_IP, PPP_IPV6: ETH_P_IPV6}

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44  # IPv6 fragment header
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
PORT_PROTOCOLS = frozenset((IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE, 33))  # 33: DCCP
ICMP_PROTOCOLS = frozenset((IPPROTO_ICMP, IPPROTO_ICMPV6))
# IPv6 extension headers sized in 8-octet units after the first 8 (RFC 8200 §4), AH in 4-octet
# units after the first 8 (RFC 4302 §2.2).
IPV6_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140, IPPROTO_AH))

U16 = struct.Struct("!H").unpack_from
ETHERNET_TYPE = struct.Struct("!12xH").unpack_from  # (dst, src), ethertype
VLAN_TAG = struct.Struct("!HH").unpack_from  # tci, inner ethertype
MPLS_LABEL = struct.Struct("!I").unpack_from  # label(20) tc(3) bottom-of-stack(1) ttl(8)
IPV4_HEADER = struct.Struct("!BBHHHBB2x4s4s").unpack_from  # ver/ihl, tos, total len, id, flags/frag, ttl, proto, (checksum), src, dst
IPV6_HEADER = struct.Struct("!IHBB16s16s").unpack_from  # ver/class/label, payload len, next header, hop limit, src, dst
IPV6_EXTENSION = struct.Struct("!BB").unpack_from  # next header, length
IPV6_FRAGMENT = struct.Struct("!B1xHI").unpack_from  # next header, offset/flags, identification
PORTS = struct.Struct("!HH").unpack_from  # source port, destination port
TCP_PORTS_FLAGS = struct.Struct("!HH9xB").unpack_from  # ports, (seq, ack, offset), flags
ICMP_TYPE_CODE = struct.Struct("!H").unpack_from  # type, code

NO_MAC = bytes(6)
NO_MACS = NO_MAC + NO_MAC

FRAGMENT_TIMEOUT_MS = 30_000
FRAGMENT_TABLE_SIZE = 65_536

# Why a frame was skipped: the keys of Decoder.skipped.
TRUNCATED_LINK = "truncated link header"
NOT_IP = "not IP"
TRUNCATED_IP = "truncated IP header"
BAD_IP_VERSION = "bad IP version"
BAD_IP_HEADER = "bad IP header length"
BAD_IP_LENGTH = "bad IP total length"
TRUNCATED_TRANSPORT = "truncated transport header"


class Decoder:
    """Turns captured frames of one link type into `Packet`s, counting what it skips.

    `parse(frame)` reads the frames of the common shapes into the decoder's own fields (`size`
    to `address_size`) without making a Packet: the flow cache meters them from there.
    `link_header(frame)` reads the frame's MAC addresses and MPLS labels, only when asked: the
    cache asks for the first packet of a flow direction, when a template exports them.
    """

    __slots__ = ("linktype", "decode", "skipped", "skipped_octets", "_fragments", "ethernet",
                 "size", "protocol", "vlan_id", "ttl", "tos", "flags", "src_port", "dst_port",
                 "ip_offset", "src_at", "address_size", "_mpls_frame", "_mpls_at")

    def __init__(self, linktype: int) -> None:
        link = {
            LINKTYPE_ETHERNET: self._ethernet, LINKTYPE_LINUX_SLL: self._linux_sll,
            LINKTYPE_LINUX_SLL2: self._linux_sll2, LINKTYPE_RAW: self._raw_ip,
            LINKTYPE_IPV4: self._raw_ip, LINKTYPE_IPV6: self._raw_ip, LINKTYPE_NULL: self._loopback,
            LINKTYPE_LOOP: self._loopback, LINKTYPE_PPP: self._ppp, LINKTYPE_C_HDLC: self._c_hdlc,
        }.get(linktype)
        if link is None:
            raise CaptureError(f"unsupported link type {linktype}")
        self.linktype = linktype
        self.decode = link
        """decode(time_ms, frame) -> Packet | None"""
        self.skipped: Counter[str] = Counter()
        self.skipped_octets = 0
        self._fragments: OrderedDict[tuple, tuple[int, int, int, int]] = OrderedDict()
        self.ethernet = linktype == LINKTYPE_ETHERNET
        self.size = self.protocol = self.vlan_id = self.ttl = self.tos = self.flags = 0
        self.src_port = self.dst_port = self.ip_offset = self.src_at = self.address_size = 0
        self._mpls_frame: bytes | None = None  # the last frame with an MPLS label stack
        self._mpls_at = 0  # where its stack starts

    def _skip(self, reason: str, frame: bytes) -> None:
        self.skipped[reason] += 1
        self.skipped_octets += len(frame)

    # Link layers: each finds the network header and hands it to _ethertype or _ip.

    def parse(self, frame: bytes) -> bool:
        """Reads an Ethernet frame of the fast paths' shapes into the fields: untagged or with
        one VLAN tag, IPv4 without options or fragments or IPv6 without extension headers,
        carrying TCP or UDP; False for any other frame, which `decode` takes the general way
        (decoding these the same). Its addresses are `address_size` octets at `src_at`, then
        the destination's; its IP header starts at `ip_offset`."""
        # Read octet by octet, the constants spelt out: compiled, a module-level name would be
        # read from the module and compared as an object.
        if not self.ethernet or len(frame) < 54:  # room for Ethernet + IPv4 + TCP flags
            return False
        ethertype = frame[12] << 8 | frame[13]
        ip = 14
        vlan_id = 0
        if ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:  # VLAN_TPIDS
            vlan_id = (frame[14] << 8 | frame[15]) & 0x0FFF
            ethertype = frame[16] << 8 | frame[17]
            ip = 18
        if ethertype == 0x0800:  # ETH_P_IP
            size = frame[ip + 2] << 8 | frame[ip + 3]
            protocol = frame[ip + 9]
            tcp = protocol == 6  # IPPROTO_TCP
            if len(frame) < ip + 40 or frame[ip] != 0x45 or (
                    frame[ip + 6] << 8 | frame[ip + 7]) & 0x3FFF or not (
                    tcp and size >= 34 or protocol == 17 and size >= 24):  # 17: IPPROTO_UDP
                return False
            self.ttl, self.tos = frame[ip + 8], frame[ip + 1]
            self.src_at, self.address_size = ip + 12, 4
            l4 = ip + 20
        elif ethertype == 0x86DD and frame[ip] >> 4 == 6:  # ETH_P_IPV6
            payload = frame[ip + 4] << 8 | frame[ip + 5]
            protocol = frame[ip + 6]
            tcp = protocol == 6
            if not (tcp and payload >= 14 and len(frame) >= ip + 54
                    or protocol == 17 and payload >= 4 and len(frame) >= ip + 44):
                return False
            size = payload + 40
            self.ttl, self.tos = frame[ip + 7], (frame[ip] & 0x0F) << 4 | frame[ip + 1] >> 4
            self.src_at, self.address_size = ip + 8, 16
            l4 = ip + 40
        else:
            return False
        self.size, self.protocol, self.vlan_id, self.ip_offset = size, protocol, vlan_id, ip
        self.src_port = frame[l4] << 8 | frame[l4 + 1]
        self.dst_port = frame[l4 + 2] << 8 | frame[l4 + 3]
        self.flags = frame[l4 + 13] if tcp else 0
        return True

    def packet(self, time_ms: int, frame: bytes) -> Packet:
        """The Packet of the frame `parse` last read."""
        octets, src_at, size = frame, self.src_at, self.address_size  # compiled: a C pointer
        return _new_packet(Packet, (
            time_ms, octets[src_at:src_at + size], octets[src_at + size:src_at + 2 * size],
            self.src_port, self.dst_port, self.protocol, self.vlan_id, self.size, self.ttl,
            self.tos, self.flags, 0, 0, frame, self.ip_offset))

    def link_header(self, frame: bytes) -> bytes:
        """The link layer of `frame`, the frame this decoder read last, as `Direction.link`
        keeps it: the destination and source MAC addresses, in Ethernet's order (Linux cooked
        captures have the sender's alone; zeros where there are none), then at most MPLS_LABELS
        label stack entries less their TTL (3 octets each), top first."""
        linktype = self.linktype
        if linktype == LINKTYPE_ETHERNET:
            header = frame[:12]
        elif linktype == LINKTYPE_LINUX_SLL and frame[4] == 0 and frame[5] == 6:  # address length
            header = NO_MAC + frame[6:12]
        elif linktype == LINKTYPE_LINUX_SLL2 and frame[11] == 6:
            header = NO_MAC + frame[12:18]
        else:
            header = NO_MACS
        if self._mpls_frame is not frame:
            return header
        at = self._mpls_at
        end = at + 4 * MPLS_LABELS
        while at < end:  # decoding found the whole stack in the frame
            header += frame[at:at + 3]  # label, TC, bottom of stack: the entry less its TTL
            if frame[at + 2] & 1:
                break
            at += 4
        return header

    def _ethernet(self, time_ms: int, frame: bytes) -> Packet | None:
        if self.parse(frame):
            return self.packet(time_ms, frame)
        return self._ethernet_general(time_ms, frame)

    def _ethernet_general(self, time_ms: int, frame: bytes) -> Packet | None:
        """Any Ethernet frame: those the fast paths leave come here."""
        if len(frame) < 14:
            return self._skip(TRUNCATED_LINK, frame)
        return self._ethertype(time_ms, frame, 14, ETHERNET_TYPE(frame)[0])

    def _linux_sll(self, time_ms: int, frame: bytes) -> Packet | None:
        if len(frame) < 16:
            return self._skip(TRUNCATED_LINK, frame)
        return self._ethertype(time_ms, frame, 16, U16(frame, 14)[0])

    def _linux_sll2(self, time_ms: int, frame: bytes) -> Packet | None:
        if len(frame) < 20:
            return self._skip(TRUNCATED_LINK, frame)
        return self._ethertype(time_ms, frame, 20, U16(frame, 0)[0])

    def _raw_ip(self, time_ms: int, frame: bytes) -> Packet | None:
        return self._ip(time_ms, frame, 0, 0)

    def _loopback(self, time_ms: int, frame: bytes) -> Packet | None:
        # The address family's value differs by OS and byte order; the IP version nibble does not.
        if len(frame) < 5:
            return self._skip(TRUNCATED_LINK, frame)
        return self._ip(time_ms, frame, 4, 0)

    def _ppp(self, time_ms: int, frame: bytes) -> Packet | None:
        offset = 2 if frame[:2] == b"\xff\x03" else 0  # address and control, when not compressed
        if len(frame) < offset + 2:
            return self._skip(TRUNCATED_LINK, frame)
        ethertype = PPP_TO_ETHERTYPE.get(U16(frame, offset)[0])
        if ethertype is None:
            return self._skip(NOT_IP, frame)
        return self._ethertype(time_ms, frame, offset + 2, ethertype)

    def _c_hdlc(self, time_ms: int, frame: bytes) -> Packet | None:
        if len(frame) < 4:
            return self._skip(TRUNCATED_LINK, frame)
        return self._ethertype(time_ms, frame, 4, U16(frame, 2)[0])

    def _ethertype(self, time_ms: int, frame: bytes, offset: int, ethertype: int,
                   vlan_id: int = 0) -> Packet | None:
        """Walks VLAN tags, MPLS labels and PPPoE to the IP header; the outer VLAN id is kept."""
        while True:
            if ethertype == ETH_P_IP:
                return self._ipv4(time_ms, frame, offset, vlan_id)
            if ethertype == ETH_P_IPV6:
                return self._ipv6(time_ms, frame, offset, vlan_id)
            if ethertype in VLAN_TPIDS:
                if len(frame) < offset + 4:
                    return self._skip(TRUNCATED_LINK, frame)
                tci, ethertype = VLAN_TAG(frame, offset)
                vlan_id = vlan_id or tci & 0x0FFF
                offset += 4
            elif ethertype == ETH_P_MPLS_UC or ethertype == ETH_P_MPLS_MC:
                self._mpls_frame, self._mpls_at = frame, offset  # for link_header
                while True:
                    if len(frame) < offset + 4:
                        return self._skip(TRUNCATED_LINK, frame)
                    label = MPLS_LABEL(frame, offset)[0]
                    offset += 4
                    if label & 0x100:  # bottom of stack
                        break
                return self._ip(time_ms, frame, offset, vlan_id)
            elif ethertype == ETH_P_PPP_SES:
                if len(frame) < offset + 8:
                    return self._skip(TRUNCATED_LINK, frame)
                ethertype = PPP_TO_ETHERTYPE.get(U16(frame, offset + 6)[0], 0)
                offset += 8
            else:
                return self._skip(NOT_IP, frame)

    # Network layer.

    def _ip(self, time_ms: int, frame: bytes, offset: int, vlan_id: int) -> Packet | None:
        """An IP header of either version, told by its first nibble."""
        if len(frame) <= offset:
            return self._skip(TRUNCATED_IP, frame)
        version = frame[offset] >> 4
        if version == 4:
            return self._ipv4(time_ms, frame, offset, vlan_id)
        if version == 6:
            return self._ipv6(time_ms, frame, offset, vlan_id)
        return self._skip(BAD_IP_VERSION, frame)

    def _ipv4(self, time_ms: int, frame: bytes, offset: int, vlan_id: int) -> Packet | None:
        if len(frame) < offset + 20:
            return self._skip(TRUNCATED_IP, frame)
        ver_ihl, tos, size, ip_id, fragment, ttl, protocol, src, dst = IPV4_HEADER(frame, offset)
        header = (ver_ihl & 0x0F) << 2
        if ver_ihl >> 4 != 4:
            return self._skip(BAD_IP_VERSION, frame)
        if header < 20 or len(frame) < offset + header:
            return self._skip(BAD_IP_HEADER, frame)
        if size < header:
            if size:
                return self._skip(BAD_IP_LENGTH, frame)
            size = len(frame) - offset  # 0: segmentation offload; the frame is the datagram
        if fragment & 0x3FFF:  # more fragments, or an offset
            return self._fragment(time_ms, frame, offset, offset + header, vlan_id, src, dst,
                                  protocol, size, ttl, tos,
                                  (ip_id, protocol, fragment & 0x1FFF, fragment & 0x2000))
        return self._transport(time_ms, frame, offset, offset + header, vlan_id, src, dst,
                               protocol, size, ttl, tos)

    def _ipv6(self, time_ms: int, frame: bytes, offset: int, vlan_id: int) -> Packet | None:
        if len(frame) < offset + 40:
            return self._skip(TRUNCATED_IP, frame)
        if frame[offset] >> 4 != 6:
            return self._skip(BAD_IP_VERSION, frame)
        ver_class_label, payload, protocol, hop_limit, src, dst = IPV6_HEADER(frame, offset)
        size = payload + 40 if payload else len(frame) - offset  # 0: jumbogram or offload
        tos = ver_class_label >> 20 & 0xFF
        l4 = offset + 40
        fragment = None  # (IP id, next header, offset, more fragments) past a Fragment header
        while protocol in IPV6_EXTENSIONS or protocol == IPPROTO_FRAGMENT:
            if protocol == IPPROTO_FRAGMENT:
                if len(frame) < l4 + 8:
                    return self._skip(TRUNCATED_IP, frame)
                next_header, offset_flags, ip_id = IPV6_FRAGMENT(frame, l4)
                fragment = (ip_id, next_header, offset_flags >> 3, offset_flags & 1)
                l4 += 8
                if fragment[2]:  # a later fragment: what follows is payload, not headers
                    protocol = next_header
                    break
            else:
                if len(frame) < l4 + 2:
                    return self._skip(TRUNCATED_IP, frame)
                next_header, length = IPV6_EXTENSION(frame, l4)
                l4 += (length + 2) * 4 if protocol == IPPROTO_AH else (length + 1) * 8
            protocol = next_header
        if fragment is not None:
            return self._fragment(time_ms, frame, offset, l4, vlan_id, src, dst, protocol, size,
                                  hop_limit, tos, fragment)
        return self._transport(time_ms, frame, offset, l4, vlan_id, src, dst, protocol, size,
                               hop_limit, tos)

    def _fragment(self, time_ms: int, frame: bytes, offset: int, l4: int, vlan_id: int,
                  src: bytes, dst: bytes, protocol: int, size: int, ttl: int, tos: int,
                  fragment: tuple[int, int, int, int]) -> Packet | None:
        """A fragment: the first one is decoded and remembered, the others take its ports.

        `fragment` is (IP id, the protocol every fragment of the datagram names, offset, more
        fragments); `protocol` is the upper-layer protocol found behind the headers.
        """
        ip_id, datagram_protocol, fragment_offset, more_fragments = fragment
        fragments = self._fragments
        datagram = (src, dst, datagram_protocol, ip_id)
        if fragment_offset == 0:  # metered as it is, never opened as a tunnel: the rest is cut
            packet = Decoder._transport(self, time_ms, frame, offset, l4, vlan_id, src, dst,
                                        protocol, size, ttl, tos)
            if packet is not None and more_fragments:
                fragments[datagram] = (time_ms, protocol, packet[3], packet[4], packet[11])
                fragments.move_to_end(datagram)
                self._forget_fragments(time_ms)
            return packet
        first = fragments.get(datagram)
        if first is None or time_ms - first[0] > FRAGMENT_TIMEOUT_MS:
            first = (0, datagram_protocol, 0, 0, 0)
        elif not more_fragments:
            del fragments[datagram]  # the last fragment: nothing more will ask
        return _new_packet(Packet, (time_ms, src, dst, first[2], first[3], first[1], vlan_id, size,
                                    ttl, tos, 0, first[4], 0, frame, offset))

    def _forget_fragments(self, time_ms: int) -> None:
        fragments = self._fragments
        while fragments and (len(fragments) > FRAGMENT_TABLE_SIZE
                             or time_ms - next(iter(fragments.values()))[0] > FRAGMENT_TIMEOUT_MS):
            fragments.popitem(last=False)

    # Transport layer.

    def _transport(self, time_ms: int, frame: bytes, offset: int, l4: int, vlan_id: int,
                   src: bytes, dst: bytes, protocol: int, size: int, ttl: int,
                   tos: int) -> Packet | None:
        end = min(len(frame), offset + size)  # past the datagram is link padding
        if protocol == IPPROTO_TCP:
            if end < l4 + 14:
                return self._skip(TRUNCATED_TRANSPORT, frame)
            src_port, dst_port, flags = TCP_PORTS_FLAGS(frame, l4)
            return _new_packet(Packet, (time_ms, src, dst, src_port, dst_port, protocol, vlan_id,
                                        size, ttl, tos, flags, 0, 0, frame, offset))
        if protocol in PORT_PROTOCOLS:
            if end < l4 + 4:
                return self._skip(TRUNCATED_TRANSPORT, frame)
            src_port, dst_port = PORTS(frame, l4)
            return _new_packet(Packet, (time_ms, src, dst, src_port, dst_port, protocol, vlan_id,
                                        size, ttl, tos, 0, 0, 0, frame, offset))
        if protocol in ICMP_PROTOCOLS:
            if end < l4 + 2:
                return self._skip(TRUNCATED_TRANSPORT, frame)
            return _new_packet(Packet, (time_ms, src, dst, 0, 0, protocol, vlan_id, size, ttl, tos,
                                        0, ICMP_TYPE_CODE(frame, l4)[0], 0, frame, offset))
        return _new_packet(Packet, (time_ms, src, dst, 0, 0, protocol, vlan_id, size, ttl, tos, 0,
                                    0, 0, frame, offset))


_new_packet = tuple.__new__  # builds a Packet from a ready tuple, skipping NamedTuple's __new__
