"""IPFIX over TCP (RFC 7011 §10.4): one connection to one collector, never blocking the meter.

Each connection opens with the `greeting` (the exporter's templates, sent once per connection:
TCP needs no refresh), then the messages in order. Messages wait in a `backlog.Backlog` of at
most `queue_octets` while the collector is away or reads slower than the probe sends; beyond,
the oldest are dropped, counted (`errors`) and logged at most once per `log_interval_s`. A lost
connection is tried again after 1 s, then twice as long each time up to a minute. What the
collector's system had not acknowledged when the connection broke is sent again on the next
one (the kernel's send queue, TIOCOUTQ, tells how much), so a collector that restarts loses
nothing that fit the queue; what it had received but not read when it died is lost, as with any
TCP exporter. `close` waits up to `linger_s` for the collector to acknowledge everything.

Sequence numbers go on across connections, so a gap at the collector is what was dropped; the
templates' messages carry no data record and take the number of the message they precede.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Iterable

from .backlog import Backlog
from .transport import SocketOptions, TransportError, export_socket, resolve

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0  # the wait before connecting again after a failure; doubled each time
LAST_BACKOFF_S = 60.0
USER_TIMEOUT_MS = 30_000  # unacknowledged data older than this breaks the connection
SEQUENCE = slice(8, 12)  # of the IPFIX message header (RFC 7011 §3.1)
DOMAIN = slice(12, 16)
OUTQ = struct.Struct("i")


class TcpTransport:
    """One TCP connection to one IPFIX collector, with a bounded queue for when it is away."""

    __slots__ = ("host", "port", "name", "address", "options", "linger_s", "log_interval_s",
                 "greeting", "connections", "sent_messages", "sent_octets", "_family",
                 "_backlog", "_socket", "_connected", "_preface", "_offset", "_unacked",
                 "_written", "_retry_at", "_backoff", "_last_log")

    def __init__(self, host: str, port: int, options: SocketOptions = SocketOptions(), *,
                 queue_octets: int = 64 << 20, linger_s: float = 10.0,
                 log_interval_s: float = 60) -> None:
        self.host, self.port = host, port
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._family, _, _, self.address = resolve(host, port, socket.SOCK_STREAM)
        self.options = options
        export_socket(self.name, self._family, socket.SOCK_STREAM, 0, options).close()
        self.linger_s, self.log_interval_s = linger_s, log_interval_s
        self.greeting: Callable[[], list[bytes]] = lambda: []
        """Makes the messages each connection opens with (the templates)."""
        self.connections = self.sent_messages = self.sent_octets = 0
        self._backlog: Backlog[bytes] = Backlog(f"collector {self.name}", queue_octets,
                                                log_interval_s=log_interval_s)
        self._socket: socket.socket | None = None
        self._connected = False
        self._preface: deque[bytes] = deque()  # this connection's greeting, not yet written
        self._offset = 0  # octets of the first message to write already written
        self._unacked: deque[tuple[bytes, int]] = deque()
        """Messages written but not acknowledged, each with the stream offset of its end."""
        self._written = 0  # octets written on this connection
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF_S
        self._last_log = -log_interval_s

    @property
    def errors(self) -> int:
        """Messages dropped: past the queue, or not acknowledged within the linger."""
        return self._backlog.dropped

    @property
    def held(self) -> int:
        """Messages waiting to be written or acknowledged, as of now."""
        self._acknowledged()
        return len(self._backlog) + len(self._unacked)

    @property
    def held_octets(self) -> int:
        self._acknowledged()
        return self._backlog.octets + sum(len(message) for message, _ in self._unacked)

    def send(self, messages: Iterable[bytes]) -> None:
        """Queues the messages and writes what the connection takes, without waiting."""
        self._backlog.extend(messages, "not connected or too slow")
        self._pump()

    def _pump(self) -> None:
        """Connects when due, then writes while the socket takes it (nothing held: the
        connection is looked at next time)."""
        if not self._backlog and not self._preface and not self.held:
            return
        if self._socket is None:
            if time.monotonic() < self._retry_at:
                return
            self._connect()
        sock = self._socket
        if sock is None:
            return
        if not self._connected:
            if not select.select((), (sock,), (), 0)[1]:
                return  # still connecting
            failure = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if failure:
                self._lost(f"cannot connect: {os.strerror(failure)}")
                return
            self._opened()
        elif self._closed_by_peer():
            return
        self._write()
        self._acknowledged()

    def _connect(self) -> None:
        try:
            sock = export_socket(self.name, self._family, socket.SOCK_STREAM, 0, self.options)
        except TransportError as error:  # its source went away since the start
            self._socket = None
            self._failed(str(error).partition(": ")[2])
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a message goes when whole
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
        self._socket = sock
        failure = sock.connect_ex(self.address)
        if failure not in (0, errno.EINPROGRESS):
            self._lost(f"cannot connect: {os.strerror(failure)}")

    def _opened(self) -> None:
        """The connection is up: its greeting goes first, numbered as the messages it precedes."""
        self._connected = True
        self.connections += 1
        self._backoff = FIRST_BACKOFF_S
        log.info("collector %s: connected (%d messages held)", self.name, len(self._backlog))
        greeting = self.greeting()
        domains = {message[DOMAIN] for message in greeting}
        following: dict[bytes, bytes] = {}
        for message in self._backlog:
            if len(following) == len(domains):
                break
            if message[DOMAIN] in domains:
                following.setdefault(message[DOMAIN], message[SEQUENCE])
        self._preface.extend(message[:SEQUENCE.start] + following.get(message[DOMAIN],
                                                                       message[SEQUENCE])
                             + message[SEQUENCE.stop:] for message in greeting)

    def _closed_by_peer(self) -> bool:
        """Whether the collector closed the connection (it sends nothing: data is skipped)."""
        sock = self._socket
        if not select.select((sock,), (), (), 0)[0]:
            return False
        try:
            if sock.recv(65536):
                return False
            reason = "closed by the collector"
        except BlockingIOError:
            return False
        except OSError as error:
            reason = error.strerror or str(error)
        self._lost(reason)
        return True

    def _write(self) -> None:
        """Writes the greeting, then the held messages, until the socket takes no more."""
        sock, preface, backlog = self._socket, self._preface, self._backlog
        while preface or backlog:
            message = preface[0] if preface else backlog.first()
            try:
                written = sock.send(memoryview(message)[self._offset:])
            except BlockingIOError:
                return
            except OSError as error:
                self._lost(error.strerror or str(error))
                return
            self._offset += written
            self._written += written
            if self._offset < len(message):
                return
            self._offset = 0
            if preface:
                preface.popleft()
                continue
            backlog.popleft()
            self._unacked.append((message, self._written))
            self.sent_messages += 1
            self.sent_octets += len(message)

    def _acknowledged(self) -> None:
        """Forgets the messages the collector's system has acknowledged."""
        unacked = self._unacked
        if not unacked or self._socket is None:
            return
        try:
            queued = OUTQ.unpack(fcntl.ioctl(self._socket, termios.TIOCOUTQ, bytes(OUTQ.size)))[0]
        except OSError:  # not Linux: what was written counts as acknowledged
            queued = 0
        acknowledged = self._written - queued
        while unacked and unacked[0][1] <= acknowledged:
            unacked.popleft()

    def _lost(self, reason: str) -> None:
        """The connection failed: what it did not acknowledge is held again, first."""
        self._socket.close()
        self._socket, self._connected = None, False
        self._backlog.extendleft([message for message, _ in self._unacked])
        self._backlog.extend((), "not connected or too slow")  # within the limit again
        self._unacked.clear()
        self._preface.clear()
        self._offset = self._written = 0
        self._failed(reason)

    def _failed(self, reason: str) -> None:
        """The next try waits for the backoff, which doubles."""
        self._retry_at = time.monotonic() + self._backoff
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            log.warning("collector %s: %s; trying again in %g s, %d messages held", self.name,
                        reason, self._backoff, len(self._backlog))
        self._backoff = min(self._backoff * 2, LAST_BACKOFF_S)

    def _wait(self, seconds: float) -> None:
        """Until the socket can take more, or `seconds`."""
        if self._socket is not None and (self._preface or self._backlog or not self._connected):
            select.select((), (self._socket,), (), seconds)
        else:
            time.sleep(seconds)

    def _done(self) -> bool:
        return not self.held

    def close(self) -> None:
        """Waits up to `linger_s` for the collector to acknowledge what is held, then closes."""
        self._backlog.linger(self.linger_s, self._wait, self._pump, self._done)
        if self._unacked:  # written, but the collector's system never said it had them
            log.warning("collector %s: %d messages not acknowledged within %g s; counted as "
                        "dropped", self.name, len(self._unacked), self.linger_s)
            self._backlog.drop(message for message, _ in self._unacked)
            self._unacked.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
