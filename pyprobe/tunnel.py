"""Tunnels: `TunnelDecoder` meters a tunnelled packet as the packet inside it.

GTP-U, GRE (with PPTP's enhanced GRE carrying PPP), VXLAN, Teredo and IP in IP are opened one
tunnel deep: the packet's key, sizes and `ip_offset` are the inner packet's, the tunnel's id (GTP
TEID, VXLAN VNI, GRE key, PPTP call id) is kept in `tunnel_id`, the VLAN stays the outer frame's.
A tunnel that cannot be opened (a malformed or cut header or inner packet) is metered as the outer
packet and counted by reason in `TunnelDecoder.tunnel_fallbacks`. Tunnel packets that carry no
user packet (signalling, acknowledgements) and outer IP fragments (the inner packet is cut) are
metered as the outer packet too, uncounted. A tunnel inside the inner packet is not opened.

UDP over untagged Ethernet skips `Decoder`'s fast paths, which would meter a tunnel's outer packet.

>>> import dpkt
>>> inner = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=17,
...                    data=dpkt.udp.UDP(sport=5353, dport=53, data=b"x"))
>>> vxlan = bytes.fromhex("0800000000abcd00") + bytes(dpkt.ethernet.Ethernet(data=inner))
>>> frame = bytes(dpkt.ethernet.Ethernet(data=dpkt.ip.IP(src=bytes([192, 0, 2, 1]),
...     dst=bytes([192, 0, 2, 2]), p=17, data=dpkt.udp.UDP(sport=40000, dport=4789, data=vxlan))))
>>> packet = TunnelDecoder(1).decode(1000, frame)
>>> packet.src_port, packet.dst_port, packet.ip_size, packet.tunnel_id, packet.ip_offset
(5353, 53, 29, 43981, 64)
"""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from .decode import (
    ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, LINKTYPE_RAW, PORTS, PPP_TO_ETHERTYPE,
    U16, Decoder,
)
from .flow import Packet

# Each opener reads its tunnel header at frame[start:end] (`end`: the outer datagram's end) and
# returns (inner offset, inner ethertype, tunnel id), None when the packet carries no user packet
# (signalling, acknowledgements), or raises TunnelError.

UDP_PORT_GTP_U = 2152
UDP_PORT_TEREDO = 3544
UDP_PORT_VXLAN = 4789
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
ETH_P_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame in GRE
ETH_P_PPP = 0x880B  # PPP, in PPTP's enhanced GRE
IP_VERSION_TO_ETHERTYPE = {4: ETH_P_IP, 6: ETH_P_IPV6}

GTP_HEADER = struct.Struct("!BBHI").unpack_from  # flags, message type, length, TEID
GTP_T_PDU = 255  # a user packet; echo, error indication and end marker carry none
GRE_HEADER = struct.Struct("!HH").unpack_from  # C R K S s recur / flags / version, protocol type
GRE_KEY = struct.Struct("!I").unpack_from
PPTP_KEY = struct.Struct("!HH").unpack_from  # payload length, call id
VXLAN_HEADER = struct.Struct("!B3xI").unpack_from  # flags, (reserved), VNI · 256 + reserved


class TunnelError(Exception):
    """A tunnel header that cannot be opened; the argument says why."""


def _ethernet_inside(frame: bytes, offset: int, end: int, tunnel_id: int) -> tuple[int, int, int]:
    """An Ethernet frame carried at `offset`: its payload's offset and ethertype."""
    if end < offset + 14:
        raise TunnelError("truncated inner Ethernet header")
    return offset + 14, U16(frame, offset + 12)[0], tunnel_id


def open_gtp_u(frame: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """GTPv1-U (3GPP TS 29.281 §5): a T-PDU's user packet, after the optional fields and the
    extension headers; the TEID."""
    if end < start + 8:
        raise TunnelError("truncated GTP header")
    flags, message, _, teid = GTP_HEADER(frame, start)
    if flags & 0xF0 != 0x30:  # version 1, protocol type GTP (not GTP')
        raise TunnelError("not GTPv1")
    if message != GTP_T_PDU:
        return None
    offset = start + 8
    if flags & 0x07:  # E, S or PN: sequence number, N-PDU number, next extension header type
        if end < offset + 4:
            raise TunnelError("truncated GTP header")
        next_type = frame[offset + 3] if flags & 0x04 else 0
        offset += 4
        while next_type:  # each: length in 4-octet units, contents, next type in its last octet
            length = frame[offset] * 4 if end > offset else 0
            if not length or end < offset + length:
                raise TunnelError("bad GTP extension header")
            next_type = frame[offset + length - 1]
            offset += length
    ethertype = IP_VERSION_TO_ETHERTYPE.get(frame[offset] >> 4) if end > offset else None
    if ethertype is None:
        raise TunnelError("no IP packet")
    return offset, ethertype, teid


def open_gre(frame: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """GRE (RFC 2784, 2890) and PPTP's enhanced GRE (RFC 2637 §4.1) carrying PPP: the packet
    inside; the key (PPTP: the call id)."""
    if end < start + 4:
        raise TunnelError("truncated GRE header")
    flags, protocol = GRE_HEADER(frame, start)
    offset, key = start + 4, 0
    version = flags & 0x07
    if version == 0:
        if flags & 0x4000:  # RFC 1701 source routing, obsolete
            raise TunnelError("GRE routing present")
        offset += 4 if flags & 0x8000 else 0  # checksum, reserved
        if flags & 0x2000:
            if end < offset + 4:
                raise TunnelError("truncated GRE header")
            key = GRE_KEY(frame, offset)[0]
            offset += 4
        offset += 4 if flags & 0x1000 else 0  # sequence number
        if protocol == ETH_P_TEB:
            return _ethernet_inside(frame, offset, end, key)
    elif version == 1 and protocol == ETH_P_PPP and flags & 0x2000:
        if end < offset + 4:
            raise TunnelError("truncated GRE header")
        payload, key = PPTP_KEY(frame, offset)
        offset += 4 + (4 if flags & 0x1000 else 0) + (4 if flags & 0x0080 else 0)  # sequence, ack
        if not payload:  # an acknowledgment alone
            return None
        if end >= offset + 2 and frame[offset] == 0xFF and frame[offset + 1] == 0x03:
            offset += 2  # address and control, when not compressed
        if end < offset + 2:
            raise TunnelError("truncated PPP header")
        compressed = frame[offset] & 1  # a one-octet protocol field (RFC 1661 §6.5)
        ppp = frame[offset] if compressed else U16(frame, offset)[0]
        offset += 1 if compressed else 2
        protocol = PPP_TO_ETHERTYPE.get(ppp, 0)
        if not protocol:  # PPP control, or compressed or encrypted (MPPE) data
            return None
    else:
        raise TunnelError("bad GRE version")
    if end < offset:
        raise TunnelError("truncated GRE header")
    return offset, protocol, key


def open_vxlan(frame: bytes, start: int, end: int) -> tuple[int, int, int]:
    """VXLAN (RFC 7348): the Ethernet frame inside; the VNI."""
    if end < start + 8:
        raise TunnelError("truncated VXLAN header")
    flags, vni = VXLAN_HEADER(frame, start)
    if not flags & 0x08:
        raise TunnelError("VXLAN VNI flag not set")
    return _ethernet_inside(frame, start + 8, end, vni >> 8)


def open_teredo(frame: bytes, start: int, end: int) -> tuple[int, int, int]:
    """Teredo (RFC 4380 §5.1.1): the IPv6 packet after the optional authentication and origin
    indications."""
    offset = start
    if end >= offset + 4 and frame[offset] == 0 and frame[offset + 1] == 1:
        # authentication: 0x0001, id length, auth length, client id, auth value, nonce, confirmation
        offset += 4 + frame[offset + 2] + frame[offset + 3] + 9
    if end >= offset + 2 and frame[offset] == 0 and frame[offset + 1] == 0:
        offset += 8  # origin indication: 0x0000, port, address (obfuscated)
    if end <= offset or frame[offset] >> 4 != 6:
        raise TunnelError("no IPv6 packet")
    return offset, ETH_P_IPV6, 0


def open_ipv4_in_ip(frame: bytes, start: int, end: int) -> tuple[int, int, int]:
    """IPv4 in IPv4 or IPv6 (protocol 4)."""
    return start, ETH_P_IP, 0


def open_ipv6_in_ip(frame: bytes, start: int, end: int) -> tuple[int, int, int]:
    """IPv6 in IPv4 or IPv6 (protocol 41)."""
    return start, ETH_P_IPV6, 0


class Tunnel(NamedTuple):
    """A kind of tunnel: its name in the fallback counters, and how to open it."""

    name: str
    opener: Callable[[bytes, int, int], tuple[int, int, int] | None]


UDP_TUNNELS = {  # by UDP port, the destination's looked up first
    UDP_PORT_GTP_U: Tunnel("GTP-U", open_gtp_u), UDP_PORT_VXLAN: Tunnel("VXLAN", open_vxlan),
    UDP_PORT_TEREDO: Tunnel("Teredo", open_teredo),
}
IP_TUNNELS = {  # by IP protocol
    IPPROTO_GRE: Tunnel("GRE", open_gre), IPPROTO_IPIP: Tunnel("IPv4 in IP", open_ipv4_in_ip),
    IPPROTO_IPV6: Tunnel("IPv6 in IP", open_ipv6_in_ip),
}


class _InnerDecoder(Decoder):
    """Decodes a tunnel's inner packet; a failure is not counted, its reason is kept."""

    __slots__ = ("failure",)

    def _skip(self, reason: str, frame: bytes) -> None:
        self.failure = reason


class TunnelDecoder(Decoder):
    """A `Decoder` that meters a tunnelled packet as its inner packet, with the tunnel's id."""

    __slots__ = ("tunnel_fallbacks", "_inner")

    def __init__(self, linktype: int) -> None:
        super().__init__(linktype)
        self.tunnel_fallbacks: Counter[str] = Counter()
        """Tunnelled packets metered as the outer packet, by "tunnel: reason"."""
        self._inner = _InnerDecoder(LINKTYPE_RAW)

    def parse(self, frame: bytes) -> bool:
        # Decoder's fast paths would meter a UDP tunnel's outer packet: the UDP they could take
        # goes the general way, where tunnels are opened; other frames may take them.
        return Decoder.parse(self, frame) and self.protocol != IPPROTO_UDP

    def _transport(self, time_ms: int, frame: bytes, offset: int, l4: int, vlan_id: int,
                   src: bytes, dst: bytes, protocol: int, size: int, ttl: int,
                   tos: int) -> Packet | None:
        end = min(len(frame), offset + size)
        if protocol == IPPROTO_UDP:
            tunnel = None
            if end >= l4 + 4:
                src_port, dst_port = PORTS(frame, l4)
                tunnel = UDP_TUNNELS.get(dst_port) or UDP_TUNNELS.get(src_port)
            start = l4 + 8
        else:
            tunnel = IP_TUNNELS.get(protocol)
            start = l4
        if tunnel is not None:
            packet = self._open(tunnel, time_ms, frame, start, end, vlan_id)
            if packet is not None:
                return packet
        return Decoder._transport(self, time_ms, frame, offset, l4, vlan_id, src, dst, protocol,
                                  size, ttl, tos)

    def _open(self, tunnel: Tunnel, time_ms: int, frame: bytes, start: int, end: int,
              vlan_id: int) -> Packet | None:
        """The packet inside a tunnel, or None to meter the outer one (counted when malformed)."""
        try:
            found = tunnel.opener(frame, start, end)
        except TunnelError as error:
            self.tunnel_fallbacks[f"{tunnel.name}: {error}"] += 1
            return None
        if found is None:
            return None
        offset, ethertype, tunnel_id = found
        inner = self._inner
        packet = inner._ethertype(time_ms, frame, offset, ethertype, vlan_id)
        if packet is None:
            self.tunnel_fallbacks[f"{tunnel.name}: {inner.failure}"] += 1
            return None
        if not tunnel_id:
            return packet
        (time_ms, src, dst, src_port, dst_port, protocol, vlan_id, size, ttl, tos, flags,
         icmp_type_code, _, frame, offset) = packet
        return tuple.__new__(Packet, (time_ms, src, dst, src_port, dst_port, protocol, vlan_id,
                                      size, ttl, tos, flags, icmp_type_code, tunnel_id, frame,
                                      offset))
