"""Messages held for a collector that is away or reads slower than the probe sends (TCP, ZeroMQ).

A `Backlog` holds at most `limit` octets; beyond, the oldest messages are dropped, counted and
logged at most once per `log_interval_s`, so holding never blocks the meter and never grows
without bound. `linger` is how a transport's end waits, up to a deadline, for its collector to
take what is held.

>>> backlog = Backlog("collector 192.0.2.1:4739", limit=10)
>>> backlog.extend([b"12345", b"678", b"90"])
>>> backlog.extend([b"abcd"])  # 14 octets: the oldest goes
>>> len(backlog), backlog.octets, backlog.dropped, backlog.dropped_octets
(3, 9, 1, 5)
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

M = TypeVar("M")


class Backlog(Generic[M]):
    """A bounded queue of messages, oldest first, with what it had to drop counted."""

    __slots__ = ("peer", "limit", "size", "content", "noun", "log_interval_s", "dropped",
                 "dropped_octets", "dropped_content", "_messages", "_octets", "_last_log")

    def __init__(self, peer: str, limit: int, *, size: Callable[[M], int] = len,
                 content: Callable[[M], int] = lambda message: 1, noun: str = "messages",
                 log_interval_s: float = 60) -> None:
        self.peer = peer
        """How the log names the collector."""
        self.limit = limit
        self.size = size
        self.content = content
        """What a message holds, in `noun`s (ntopng's: flows), as the log counts drops."""
        self.noun = noun
        self.log_interval_s = log_interval_s
        self.dropped = self.dropped_octets = self.dropped_content = 0
        self._messages: deque[M] = deque()
        self._octets = 0
        self._last_log = -log_interval_s

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[M]:
        return iter(self._messages)

    @property
    def octets(self) -> int:
        return self._octets

    def first(self) -> M:
        return self._messages[0]

    def popleft(self) -> M:
        message = self._messages.popleft()
        self._octets -= self.size(message)
        return message

    def extend(self, messages: Iterable[M], why: str = "away or too slow") -> None:
        """Holds the messages after the others, then drops the oldest beyond the limit."""
        for message in messages:
            self._messages.append(message)
            self._octets += self.size(message)
        while self._octets > self.limit:
            self._drop(self.popleft())
            now = time.monotonic()
            if now - self._last_log >= self.log_interval_s:
                self._last_log = now
                log.warning("%s: %s, queue full (%d octets): %d %s dropped so far", self.peer,
                            why, self.limit, self.dropped_content, self.noun)

    def extendleft(self, messages: list[M]) -> None:
        """Puts the messages, in their order, before the others (to be sent again first)."""
        for message in reversed(messages):
            self._messages.appendleft(message)
            self._octets += self.size(message)

    def drop(self, messages: Iterable[M]) -> None:
        """Counts messages as dropped (the caller held them)."""
        for message in messages:
            self._drop(message)

    def _drop(self, message: M) -> None:
        self.dropped += 1
        self.dropped_octets += self.size(message)
        self.dropped_content += self.content(message)

    def linger(self, linger_s: float, wait: Callable[[float], None], send: Callable[[], None],
               done: Callable[[], bool]) -> float:
        """Sends until `done()`, for at most `linger_s`, waiting at most 50 ms at a time between
        tries; then drops what is still held, counted and logged. Returns the deadline
        (monotonic)."""
        deadline = time.monotonic() + linger_s
        send()
        if not done():
            log.info("%s: waiting up to %g s for it to take %d messages", self.peer, linger_s,
                     len(self))
        while not done() and (left := deadline - time.monotonic()) > 0:
            wait(min(0.05, left))
            send()
        if self._messages:
            count, content = len(self), sum(map(self.content, self._messages))
            log.warning("%s: %d %s%s not taken within %g s; dropped", self.peer, content,
                        self.noun, f" in {count} messages" if self.noun != "messages" else "",
                        linger_s)
            while self._messages:
                self._drop(self.popleft())
        return deadline
