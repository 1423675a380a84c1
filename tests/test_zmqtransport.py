"""The ZeroMQ transport against real ZeroMQ peers on loopback, standing in for ntopng: a SUB
socket that subscribes to ntopng's topics, bound (ntopng -i tcp://*:PORTc) or connecting."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import zmq

from ntopng import free_tcp_port, until
from test_ntopng import SAMPLE, decode

from pyprobe import FlowStream
from pyprobe.export.ntopng import HEADER, Message, NtopngExporter
from pyprobe.export.transport import TransportError
from pyprobe.export.zmqtransport import ZmqTransport

TOPICS = (b"flow", b"event", b"counter", b"template", b"option", b"hello", b"listening-ports",
          b"snmp-ifaces", b"message")  # what ntopng subscribes to
HOST = "127.0.0.1"
FLOW = next(iter(FlowStream(str(SAMPLE), dpi=False)))  # 192.168.1.10:40000 -> :80


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # its sockets too, when a test failed before closing them


def listener(context: zmq.Context, port: int, *, bind: bool) -> zmq.Socket:
    """A SUB socket as ntopng's: bound (collector mode) or connecting to the probe."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 5000)
    (socket.bind if bind else socket.connect)(f"tcp://{HOST}:{port}")
    for topic in TOPICS:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    return socket


def flows(count: int) -> list[Message]:
    """`count` one-record flow messages, each of its own source (1, 2, ...)."""
    out = []
    for source in range(1, count + 1):
        exporter = NtopngExporter(source_id=source)
        exporter.export([FLOW], now_ms=0)
        out += exporter.flush(now_ms=0)
    return out


def exchange(transport: ZmqTransport, socket: zmq.Socket, messages: list[Message] = ()) -> None:
    """One round, as ntopng's poll loop and the probe's loop run: the listener's socket takes in
    what happened (a new connection: only then does it send its subscriptions), the transport
    sends."""
    socket.getsockopt(zmq.EVENTS)
    transport.send(messages)


def received(socket: zmq.Socket, count: int) -> list[tuple[bytes, int, int]]:
    """(topic, msg_id, source_id) of the next `count` messages."""
    out = []
    for _ in range(count):
        header, _ = socket.recv_multipart()
        topic, _, _, _, _, msg_id, source = HEADER.unpack(header)
        out.append((topic.rstrip(b"\0"), int.from_bytes(msg_id, "big"), source))
    return out


def greeter() -> Message:
    return NtopngExporter(source_id=99).event(1, interface="test", idle_timeout_s=30,
                                              active_timeout_s=120, dropped_flows=0)


@pytest.mark.parametrize("probe_mode", [False, True])
def test_messages_wait_for_the_subscription_and_go_greeted_and_numbered(
        context: zmq.Context, probe_mode: bool) -> None:
    port = free_tcp_port()
    transport = ZmqTransport(HOST, port, probe_mode=probe_mode, linger_s=5)
    transport.greeting = greeter
    transport.send(flows(3))  # nobody listens yet: held, not lost
    assert transport.sent_messages == 0
    socket = listener(context, port, bind=probe_mode)
    until(lambda: exchange(transport, socket) or transport.sent_messages == 4, "nothing went out",
          5)
    assert received(socket, 4) == [(b"event", 1, 99), (b"flow", 2, 1), (b"flow", 3, 2),
                                   (b"flow", 4, 3)]
    transport.send(flows(1))
    assert received(socket, 1) == [(b"flow", 5, 1)]
    transport.close()
    assert (transport.errors, transport.dropped_flows) == (0, 0)
    socket.close()


def test_a_listener_that_comes_back_is_greeted_again(context: zmq.Context) -> None:
    port = free_tcp_port()
    transport = ZmqTransport(HOST, port, probe_mode=True, linger_s=5)
    transport.greeting = greeter
    socket = listener(context, port, bind=True)
    until(lambda: exchange(transport, socket) or transport.sent_messages == 1, "no greeting", 5)
    assert received(socket, 1) == [(b"event", 1, 99)]
    socket.close()  # ntopng goes away: its subscriptions with it
    until(lambda: transport.send([]) or not transport.listening,
          "ntopng's going away went unnoticed", 5)
    transport.send(flows(1))
    assert (transport.sent_messages, transport.held) == (1, 1)
    socket = listener(context, port, bind=True)
    until(lambda: exchange(transport, socket) or transport.sent_messages == 3, "not sent", 5)
    assert received(socket, 2) == [(b"event", 2, 99), (b"flow", 3, 1)]
    transport.close()
    socket.close()


def test_a_full_queue_drops_the_oldest_counts_and_logs_once(caplog: pytest.LogCaptureFixture,
                                                            context: zmq.Context) -> None:
    port = free_tcp_port()
    messages = flows(40)
    size = len(messages[0].header) + len(messages[0].payload)
    transport = ZmqTransport(HOST, port, queue_octets=10 * size, linger_s=0)
    with caplog.at_level(logging.WARNING, logger="pyprobe"):
        started = time.monotonic()
        for message in messages:
            transport.send([message])
        assert time.monotonic() - started < 1  # never waits
    assert (transport.errors, transport.dropped_flows) == (30, 30)
    assert [r.getMessage() for r in caplog.records] == [
        f"ntopng tcp://127.0.0.1:{port}: not listening or too slow, queue full "
        f"({10 * size} octets): 1 flows dropped so far"]
    socket = listener(context, port, bind=False)
    until(lambda: exchange(transport, socket) or transport.sent_messages == 10, "not sent", 5)
    assert [source for _, _, source in received(socket, 10)] == list(range(31, 41))  # newest
    transport.close()
    socket.close()


def test_a_slow_listener_loses_nothing(context: zmq.Context) -> None:
    """ZeroMQ's high-water mark refuses messages ntopng has no room for; they wait here."""
    port = free_tcp_port()
    transport = ZmqTransport(HOST, port, linger_s=30)
    socket = listener(context, port, bind=False)
    socket.setsockopt(zmq.RCVHWM, 10)
    until(lambda: exchange(transport, socket) or transport.listening, "no subscription", 5)
    payload = bytes(100_000)  # 100 kB a message: socket buffers fill fast
    message = Message(HEADER.pack(b"flow", 4, 0, len(payload), len(payload), bytes(4), 1),
                      payload, 1)
    transport.send([message] * 500)
    assert transport.held and transport.errors == 0  # some wait
    ids: list[int] = []
    while len(ids) < 500:  # the probe's loop sends as it goes; ntopng reads
        transport.send([])
        while socket.poll(10):
            ids += [msg_id for _, msg_id, _ in received(socket, 1)]
    transport.close()
    assert ids == list(range(1, 501))
    assert (transport.sent_messages, transport.errors) == (500, 0)
    socket.close()


def test_close_gives_up_after_the_linger_and_counts_what_it_held(
        caplog: pytest.LogCaptureFixture) -> None:
    transport = ZmqTransport(HOST, free_tcp_port(), probe_mode=True, linger_s=0.3)
    transport.send(flows(4))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pyprobe"):
        transport.close()
    assert 0.3 <= time.monotonic() - started < 2
    assert (transport.errors, transport.dropped_flows, transport.sent_messages) == (4, 4, 0)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "waiting up to 0.3 s for it to take 4 messages",
        "4 flows in 4 messages not taken within 0.3 s; dropped"]


def test_an_endpoint_in_use_is_a_clear_error(context: zmq.Context) -> None:
    port = free_tcp_port()
    taken = context.socket(zmq.PUB)
    taken.bind(f"tcp://{HOST}:{port}")
    with pytest.raises(TransportError, match=f"^ntopng tcp://127.0.0.1:{port}: cannot bind: "
                                             "Address already in use$"):
        ZmqTransport(HOST, port)
    taken.close(linger=0)
    with pytest.raises(TransportError, match="cannot resolve 'no.such.host.invalid'"):
        ZmqTransport("no.such.host.invalid", port, probe_mode=True)


def test_ipv6_and_every_address_endpoints(context: zmq.Context) -> None:
    port = free_tcp_port()
    every = ZmqTransport("*", port)
    assert every.endpoint == f"tcp://*:{port}"
    socket = listener(context, port, bind=False)
    until(lambda: exchange(every, socket) or every.listening, "no subscription", 5)
    every.send(flows(1))
    assert decode(socket.recv_multipart()[1])[0][7] == 40000
    every.close()
    socket.close()
    ipv6 = ZmqTransport("::1", free_tcp_port(), probe_mode=True, linger_s=0)
    assert ipv6.endpoint.startswith("tcp://[::1]:")
    ipv6.close()
