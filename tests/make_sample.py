"""Builds pyprobe/data/sample.pcap, the embedded capture `make run` replays (deterministic).

Six flows a collector shows plainly: a DNS query and answer, an HTTP exchange over a full TCP
handshake and FIN close, a TLS ClientHello with a server name, ICMP echo, a VLAN-tagged UDP
stream and an IPv6 NTP exchange. Run `python tests/make_sample.py` to rewrite the file;
tests/test_sample.py checks the committed file is what this script makes.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import dpkt

SAMPLE = Path(__file__).resolve().parent.parent / "pyprobe" / "data" / "sample.pcap"
EPOCH = 1_700_000_000.0
CLIENT, SERVER, RESOLVER = bytes([192, 168, 1, 10]), bytes([93, 184, 216, 34]), bytes([192, 168, 1, 1])
CLIENT6 = bytes.fromhex("20010db8000000000000000000000010")
SERVER6 = bytes.fromhex("20010db8000000000000000000000123")
MAC_C, MAC_S = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def ethernet(ip: dpkt.Packet, vlan: int = 0, forward: bool = True) -> bytes:
    """An Ethernet frame around `ip`, 802.1Q-tagged when `vlan` is set."""
    src, dst = (MAC_C, MAC_S) if forward else (MAC_S, MAC_C)
    ethertype = dpkt.ethernet.ETH_TYPE_IP6 if isinstance(ip, dpkt.ip6.IP6) else dpkt.ethernet.ETH_TYPE_IP
    if vlan:
        return dst + src + struct.pack("!HHH", 0x8100, vlan, ethertype) + bytes(ip)
    return dst + src + struct.pack("!H", ethertype) + bytes(ip)


def ipv4(src: bytes, dst: bytes, transport: dpkt.Packet, ttl: int = 64) -> dpkt.ip.IP:
    proto = {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17, dpkt.icmp.ICMP: 1}[type(transport)]
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=ttl, id=0x1234, data=transport)
    ip.len = len(bytes(ip))
    return dpkt.ip.IP(bytes(ip))  # with checksums


def udp(sport: int, dport: int, data: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)


def dns_query(name: str, qid: int, answer: bytes | None = None) -> bytes:
    dns = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    if answer is not None:
        dns.op = dpkt.dns.DNS_QR | dpkt.dns.DNS_RA | dpkt.dns.DNS_RD
        dns.an = [dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=300, ip=answer)]
    return bytes(dns)


def client_hello(server_name: str) -> bytes:
    """A TLS 1.2 ClientHello record carrying one SNI extension."""
    name = server_name.encode()
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\xc0\x2f"
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tcp_exchange(sport: int, dport: int, start: float, request: bytes,
                 response: bytes) -> list[tuple[float, bytes]]:
    """Handshake, one request and one response, FIN both ways and the last ACK."""
    steps = [(True, dpkt.tcp.TH_SYN, b""), (False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b""),
             (True, dpkt.tcp.TH_ACK, b""), (True, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, request),
             (False, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, response),
             (True, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, b""),
             (False, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, b""), (True, dpkt.tcp.TH_ACK, b"")]
    seq = {True: 1000, False: 5000}
    frames = []
    for step, (forward, flags, payload) in enumerate(steps):
        tcp = dpkt.tcp.TCP(sport=sport if forward else dport, dport=dport if forward else sport,
                           seq=seq[forward], ack=seq[not forward], flags=flags, win=65535,
                           data=payload)
        seq[forward] += len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        ip = ipv4(CLIENT, SERVER, tcp) if forward else ipv4(SERVER, CLIENT, tcp, ttl=56)
        frames.append((start + step * 0.020, ethernet(ip, forward=forward)))
    return frames


def build() -> list[tuple[float, bytes]]:
    """Every frame of the sample, in time order."""
    frames = [
        (EPOCH, ethernet(ipv4(CLIENT, RESOLVER, udp(53000, 53, dns_query("example.com", 7))))),
        (EPOCH + 0.012, ethernet(ipv4(RESOLVER, CLIENT, udp(53, 53000, dns_query("example.com", 7, SERVER))), forward=False)),
    ]
    frames += tcp_exchange(40000, 80, EPOCH + 0.1,
                           b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: pyprobe-sample\r\n\r\n",
                           b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")
    frames += tcp_exchange(40001, 443, EPOCH + 0.5, client_hello("www.example.com"), b"\x15\x03\x03\x00\x02\x02\x28")
    for seq in range(3):
        t = EPOCH + 1 + seq
        echo = dpkt.icmp.ICMP.Echo(id=1, seq=seq, data=b"pyprobe-ping")
        frames.append((t, ethernet(ipv4(CLIENT, SERVER, dpkt.icmp.ICMP(type=8, code=0, data=echo)))))
        frames.append((t + 0.015, ethernet(ipv4(SERVER, CLIENT, dpkt.icmp.ICMP(type=0, code=0, data=echo), ttl=56), forward=False)))
    for seq in range(5):
        rtp = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5EED) + bytes(160)
        frames.append((EPOCH + 2 + seq * 0.02, ethernet(ipv4(CLIENT, SERVER, udp(16384, 16386, rtp)), vlan=42)))
    ntp = b"\x23" + bytes(47)
    for forward in (True, False):
        datagram = udp(123, 123, ntp if forward else b"\x24" + bytes(47))
        ip6 = dpkt.ip6.IP6(src=CLIENT6 if forward else SERVER6, dst=SERVER6 if forward else CLIENT6,
                           nxt=17, hlim=64, data=datagram, plen=len(bytes(datagram)))
        frames.append((EPOCH + 3 + (0 if forward else 0.03), ethernet(ip6, forward=forward)))
    return sorted(frames)


def write(path: Path) -> None:
    with path.open("wb") as out:
        writer = dpkt.pcap.Writer(out, nano=False)
        for ts, frame in build():
            writer.writepkt(frame, ts)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE)
