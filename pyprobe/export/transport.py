"""UDP transport: sends export messages to collectors; the only module that touches sockets.

A send error (collector down, ICMP port unreachable, no route) is counted and logged at most once
per `log_interval_s` per collector; it never stops the probe, and the next message is tried as usual.
The socket is connected so that the kernel reports ICMP port unreachable (ECONNREFUSED).
"""
from __future__ import annotations

import logging
import socket
import time

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


def resolve(host: str, port: int) -> tuple:
    """(family, type, protocol, address) of a collector; a TransportError names what failed."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise TransportError(f"collector {host}:{port}: cannot resolve {host!r}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
    return family, kind, proto, address


class UdpTransport:
    """One UDP socket to one collector, with send errors counted instead of raised."""

    __slots__ = ("host", "port", "address", "errors", "sent_datagrams", "sent_octets",
                 "log_interval_s", "_socket", "_last_log")

    def __init__(self, host: str, port: int, *, log_interval_s: float = 60) -> None:
        self.host, self.port = host, port
        family, kind, proto, self.address = resolve(host, port)
        self._socket = socket.socket(family, kind, proto)
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
