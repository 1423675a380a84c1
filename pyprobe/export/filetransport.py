"""Files of export messages: IPFIX files (RFC 5655) and JSON lines, rotated for a sensor.

A `FileTransport` writes the messages a collector would get into a file, or into stdout (`-`).
Each file is whole on its own: it opens with the `greeting` (the exporter's templates) and the
caller ends the exporter's session before each new file (`rotate`), so the options data and
the application names follow at its start. A new file starts at every multiple of
`rotate_interval_s` of the export clock (flow time), and once a file holds `rotate_size` octets;
strftime fields in the name (UTC) take the time the file starts at (the interval's start). A
rotated series never overwrites a file: a name already taken gets `-1`, `-2`... before its
suffix. A write error (a full disk) leaves the file as it was before the write, whole
messages only; the messages are counted, and the error logged at most once per
`log_interval_s`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STDOUT = "-"
NO_FILE = -1
STDOUT_FILENO = 1


class FileTransport:
    """Writes export messages to a file, or to a series of files."""

    __slots__ = ("pattern", "rotate_interval_ms", "rotate_size", "log_interval_s", "greeting",
                 "path", "files", "errors", "sent_messages", "sent_octets", "_fd", "_size",
                 "_next_rotation_ms", "_last_log")

    def __init__(self, pattern: str, *, rotate_interval_s: float | None = None,
                 rotate_size: int | None = None, log_interval_s: float = 60) -> None:
        self.pattern = pattern
        self.rotate_interval_ms = None if rotate_interval_s is None else round(
            rotate_interval_s * 1000)
        self.rotate_size = rotate_size
        self.log_interval_s = log_interval_s
        self.greeting: Callable[[int], list[bytes]] = lambda now_ms: []
        """Makes the messages each file opens with."""
        self.path: str | None = None
        """The file being written (None before the first)."""
        self.files = 0
        self.errors = self.sent_messages = self.sent_octets = 0
        self._fd = NO_FILE
        self._size = 0
        self._next_rotation_ms = 0
        self._last_log = -log_interval_s

    def due(self, now_ms: int) -> bool:
        """Whether the next messages go into a new file (the first one included)."""
        return (self._fd == NO_FILE or 0 < self._next_rotation_ms <= now_ms
                or (self.rotate_size is not None and self._size >= self.rotate_size))

    def rotate(self, last: list[bytes], now_ms: int) -> None:
        """Ends the file with `last` (the exporter's session, ended), and starts the next."""
        if self._fd != NO_FILE:
            self.send(last)
            self.close()
        interval = self.rotate_interval_ms
        start_ms = now_ms if interval is None else now_ms - now_ms % interval
        self._next_rotation_ms = 0 if interval is None else start_ms + interval
        self.path = self._name(start_ms)
        try:
            self._fd = (STDOUT_FILENO if self.path == STDOUT else
                        os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        except OSError as error:
            self._failed(len(last), f"cannot open {self.path}: {error.strerror}")
            self._fd = os.open(os.devnull, os.O_WRONLY)  # what goes there is counted
        self.files += 1
        self._size = 0
        self.send(self.greeting(now_ms))

    def _name(self, start_ms: int) -> str:
        """The file's name: the pattern's strftime fields at `start_ms`; when rotating, one no
        file has."""
        name = time.strftime(self.pattern, time.gmtime(start_ms / 1000))
        if name == STDOUT or (self.rotate_interval_ms is None and self.rotate_size is None):
            return name
        stem, suffix = os.path.splitext(name)
        taken = 0
        while os.path.lexists(name):
            taken += 1
            name = f"{stem}-{taken}{suffix}"
        return name

    def send(self, messages: list[bytes]) -> None:
        """Writes the messages: all of them, or none (counted as not sent)."""
        if not messages:
            return
        data = memoryview(b"".join(messages))
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as error:
            self._failed(len(messages), f"cannot write {self.path}: {error.strerror}")
            if self._fd != STDOUT_FILENO:
                try:  # not half a message: the file ends where the last whole write did
                    os.ftruncate(self._fd, self._size)
                    os.lseek(self._fd, self._size, os.SEEK_SET)
                except OSError:
                    pass
            return
        self._size += len(data)
        self.sent_messages += len(messages)
        self.sent_octets += len(data)

    def _failed(self, messages: int, problem: str) -> None:
        self.errors += messages
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            log.warning("%s (%d messages not written so far)", problem, self.errors)

    def close(self) -> None:
        if self._fd not in (NO_FILE, STDOUT_FILENO):
            os.close(self._fd)
        self._fd = NO_FILE
