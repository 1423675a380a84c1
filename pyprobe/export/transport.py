"""UDP transport: sends export messages to collectors; and what every export socket shares: the
collector's address, and how the socket looks on the network (`SocketOptions`).

A send error (collector down, ICMP port unreachable, no route) is counted and logged at most once
per `log_interval_s` per collector; it never stops the probe, and the next message is tried as usual.
The socket is connected so that the kernel reports ICMP port unreachable (ECONNREFUSED).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PyprobeError

log = logging.getLogger(__name__)


def parse_address(text: str, default_port: int | None = 2055) -> tuple[str, int | None]:
    """HOST:PORT, [IPv6]:PORT or a bare host, into (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:  # "::1:2055" reads as an address of its own: say which is meant
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port in {text!r}")
    return host, int(port) if port else default_port


class TransportError(PyprobeError):
    """A collector's address cannot be resolved."""


def resolve(host: str, port: int, kind: int = socket.SOCK_DGRAM) -> tuple:
    """(family, type, protocol, address) of a collector; a TransportError names what failed."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise TransportError(f"collector {host}:{port}: cannot resolve {host!r}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
    return family, kind, proto, address


@dataclass(frozen=True)
class SocketOptions:
    """How an export socket looks on the network (softflowd -S/-L, pmacct nfprobe_source_ip)."""

    source: str | None = None
    """Address to send from, or interface to send through (SO_BINDTODEVICE); None: routed."""
    dscp: int = 0
    """DSCP of the packets (the top six bits of the IPv4 ToS / IPv6 traffic class)."""
    ttl: int | None = None
    """IPv4 TTL / IPv6 hop limit; None: the system's."""
    send_buffer: int | None = None
    """SO_SNDBUF, octets (the kernel doubles it and caps it at net.core.wmem_max)."""


def export_socket(name: str, family: int, kind: int, proto: int,
                  options: SocketOptions = SocketOptions()) -> socket.socket:
    """A socket to collector `name` with `options` applied; a TransportError names what failed."""
    sock = socket.socket(family, kind, proto)
    ipv6 = family == socket.AF_INET6
    settings = [(socket.SOL_SOCKET, socket.SO_SNDBUF, options.send_buffer, "set the send buffer"),
                (socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP,
                 socket.IPV6_TCLASS if ipv6 else socket.IP_TOS,
                 options.dscp << 2 if options.dscp else None, "set the DSCP"),
                (socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP,
                 socket.IPV6_UNICAST_HOPS if ipv6 else socket.IP_TTL, options.ttl, "set the TTL")]
    try:
        for level, option, value, what in settings:
            if value is not None:
                _apply(sock, what, lambda: sock.setsockopt(level, option, value))
        if options.source is not None:
            _bind(sock, options.source, family)
    except TransportError as error:
        sock.close()
        raise TransportError(f"collector {name}: {error}") from None
    return sock


def _bind(sock: socket.socket, source: str, family: int) -> None:
    """Binds `sock` to a source address, or to an interface by name."""
    try:
        address = ipaddress.ip_address(source.split("%")[0])
    except ValueError:  # an interface
        _apply(sock, f"send through {source}", lambda: sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_BINDTODEVICE, source.encode()))
        return
    if (address.version == 6) != (family == socket.AF_INET6):
        raise TransportError(f"cannot send from {source} to an IPv"
                             f"{10 - address.version} address")
    _apply(sock, f"send from {source}", lambda: sock.bind(
        socket.getaddrinfo(source, 0, family, sock.type)[0][4]))


def _apply(sock: socket.socket, what: str, action: Callable[[], None]) -> None:
    try:
        action()
    except OSError as error:
        raise TransportError(f"cannot {what}: {error.strerror or error}") from None


class UdpTransport:
    """One UDP socket to one collector, with send errors counted instead of raised."""

    __slots__ = ("host", "port", "address", "errors", "sent_datagrams", "sent_octets",
                 "log_interval_s", "_socket", "_last_log")

    def __init__(self, host: str, port: int, options: SocketOptions = SocketOptions(), *,
                 log_interval_s: float = 60) -> None:
        self.host, self.port = host, port
        family, kind, proto, self.address = resolve(host, port)
        self._socket = export_socket(f"{host}:{port}", family, kind, proto, options)
        try:  # connected, so ICMP port unreachable comes back as an error on a later send
            self._socket.connect(self.address)
        except OSError as error:
            log.warning("collector %s:%d: %s; will keep trying", host, port, error.strerror or error)
        self.errors = self.sent_datagrams = self.sent_octets = 0
        self.log_interval_s = log_interval_s
        self._last_log = -log_interval_s

    def send(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            try:
                self._socket.sendto(datagram, self.address)  # sendto: also after a failed connect
            except OSError as error:
                self.errors += 1
                now = time.monotonic()
                if now - self._last_log >= self.log_interval_s:
                    self._last_log = now
                    log.warning("collector %s:%d: send failed: %s (%d errors so far)",
                                self.host, self.port, error.strerror or error, self.errors)
            else:
                self.sent_datagrams += 1
                self.sent_octets += len(datagram)

    def close(self) -> None:
        self._socket.close()
