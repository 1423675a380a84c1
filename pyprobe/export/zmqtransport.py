"""ZeroMQ transport: publishes `ntopng` messages to ntopng; with `transport`, the only modules
that touch sockets (imported only when a collector is ntopng: pyzmq takes 50 ms to load).

One XPUB socket per ntopng, bound (ntopng `-i tcp://PROBE:5556` connects to it) or connected
(`probe_mode`, nProbe's --zmq-probe-mode: to ntopng's collector-mode `-i tcp://*:5556c`).
A message goes out only once ntopng subscribes to its topic: the XPUB socket hears the
subscriptions, so nothing is published into the void before ntopng listens (ZeroMQ's slow
joiner). Until then, and while ntopng reads slower than the probe sends (ZeroMQ's high-water
mark, which XPUB_NODROP turns into a refusal rather than a silent drop), messages wait in a
`backlog.Backlog` of at most `queue_octets`; beyond, the oldest are dropped, counted (`errors`
messages, `dropped_flows` flows) and logged at most once per `log_interval_s`. Sending never
blocks the meter. Messages are numbered (msg_id) as ZeroMQ takes them. Whenever an ntopng subscribes to
events (the first, a new one, one that restarted and connected again), the `greeting` message
goes first (the probe's event). `close` waits up to `linger_s` for ntopng to take what is
queued, then counts and logs what it could not.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable

import zmq

from .backlog import Backlog
from .ntopng import EVENT_TOPIC, Message
from .transport import TransportError, resolve

log = logging.getLogger(__name__)

SUBSCRIBE = 1  # first octet of an XPUB subscription message (0: unsubscribe)
SEND_HWM = 64  # messages ZeroMQ holds for ntopng (up to 128 KiB each); beyond, ours wait


def endpoint(host: str, port: int) -> tuple[str, bool]:
    """The ZeroMQ endpoint of host:port (`*`: every local address), and whether it is IPv6."""
    if host == "*":
        return f"tcp://*:{port}", False
    family, _, _, address = resolve(host, port)
    if family == socket.AF_INET6:
        return f"tcp://[{address[0]}]:{port}", True
    return f"tcp://{address[0]}:{port}", False


class ZmqTransport:
    """One XPUB socket to one ntopng, with a bounded queue for when ntopng does not listen."""

    __slots__ = ("host", "port", "endpoint", "probe_mode", "queue_octets", "linger_s",
                 "greeting", "sent_messages", "sent_octets", "_context", "_socket", "_topics",
                 "_queue", "_msg_id")

    def __init__(self, host: str, port: int, *, probe_mode: bool = False,
                 queue_octets: int = 64 << 20, linger_s: float = 10.0,
                 log_interval_s: float = 60) -> None:
        self.host, self.port, self.probe_mode = host, port, probe_mode
        self.endpoint, ipv6 = endpoint(host, port)
        self.queue_octets, self.linger_s = queue_octets, linger_s
        self.greeting: Callable[[], Message] | None = None
        """Makes the message each new listener gets first."""
        self.sent_messages = self.sent_octets = 0
        self._context = zmq.Context(io_threads=1)  # its own: close() can wait for its queue
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)  # refuse (EAGAIN) rather than drop
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # hear every subscription, repeats too
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.IPV6, ipv6)
        # Connecting: a link to ntopng only while connected, so that ntopng's going away reads
        # as its unsubscribing (messages then wait here) and its coming back as a new listener.
        self._socket.setsockopt(zmq.IMMEDIATE, probe_mode)
        try:
            (self._socket.connect if probe_mode else self._socket.bind)(self.endpoint)
        except zmq.ZMQError as error:
            self._socket.close(linger=0)
            self._context.term()
            raise TransportError(f"ntopng {self.endpoint}: cannot "
                                 f"{'connect' if probe_mode else 'bind'}: "
                                 f"{zmq.strerror(error.errno)}") from None
        self._topics: set[bytes] = set()
        self._queue: Backlog[Message] = Backlog(
            f"ntopng {self.endpoint}", queue_octets, size=_size, content=_flows, noun="flows",
            log_interval_s=log_interval_s)
        self._msg_id = 0

    @property
    def listening(self) -> bool:
        """Whether ntopng subscribes (as of the last send)."""
        return bool(self._topics)

    @property
    def held(self) -> int:
        """Messages waiting for ntopng."""
        return len(self._queue)

    @property
    def errors(self) -> int:
        """Messages dropped: while ntopng did not listen or read slower, and at the end."""
        return self._queue.dropped

    @property
    def dropped_flows(self) -> int:
        """The flows in them."""
        return self._queue.dropped_content

    def send(self, messages: Iterable[Message]) -> None:
        """Queues the messages and sends what ntopng listens to, without waiting."""
        self._listen()
        self._queue.extend(messages, "not listening or too slow")
        self._drain()

    def _listen(self) -> None:
        """Takes in the subscriptions and unsubscriptions (those of a topic's last listener)
        that arrived; greets each listener that subscribed to events."""
        sock, topics, greet = self._socket, self._topics, False
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            data = sock.recv()
            listening = bool(topics)
            if data[:1] == bytes((SUBSCRIBE,)):
                topics.add(data[1:])
                greet = greet or EVENT_TOPIC.startswith(data[1:])
            else:
                topics.discard(data[1:])
            if listening != bool(topics):
                log.info("ntopng %s: %s", self.endpoint, "listening" if topics else
                         f"stopped listening; flows wait, up to {self.queue_octets} octets")
        if greet and self.greeting is not None:
            self._queue.extendleft([self.greeting()])

    def _drain(self) -> None:
        """Sends queued messages in order while ntopng listens to them and ZeroMQ takes them."""
        queue, sock, topics = self._queue, self._socket, self._topics
        while queue:
            message = queue.first()
            if not any(message.header.startswith(topic) for topic in topics):
                return
            try:
                sock.send_multipart(message.frames(self._msg_id + 1), zmq.NOBLOCK)
            except zmq.Again:  # ntopng's pipe is full: it reads slower than we send
                return
            self._msg_id += 1
            queue.popleft()
            self.sent_messages += 1
            self.sent_octets += _size(message)

    def _flush(self) -> None:
        self._listen()
        self._drain()

    def close(self) -> None:
        """Waits up to `linger_s` for ntopng to take the queued messages, then closes."""
        deadline = self._queue.linger(
            self.linger_s, lambda s: self._socket.poll(s * 1000, zmq.POLLIN), self._flush,
            lambda: not self._queue)
        # ZeroMQ still holds what was handed over: give it the rest of the time to send it.
        self._socket.close(linger=max(0, round((deadline - time.monotonic()) * 1000)))
        self._context.term()


def _size(message: Message) -> int:
    return len(message.header) + len(message.payload)


def _flows(message: Message) -> int:
    return message.flows
