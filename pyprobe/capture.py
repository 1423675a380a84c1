"""Packet capture through libpcap (pypcap): a capture file or a live interface, as one iterator.

The only module that touches libpcap. Frames come out as (timestamp in ns, frame bytes). A live
capture is read nonblocking with `select`, and also yields ticks, (time in ns, None): the wall
clock after `TICK_S` without a packet, else the last packet's time once per `TICK_S`, so the
meter's timers run whether or not packets arrive. `stop()` (safe in a signal handler) ends it.
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import pcap

from .decode import LINKTYPE_NAMES
from .errors import CaptureError

# libpcap reports a few link types by their platform DLT value instead of the LINKTYPE number.
DLT_TO_LINKTYPE = {12: 101, 14: 101}  # DLT_RAW (Linux, most BSDs; OpenBSD) -> LINKTYPE_RAW
TICK_S = 0.2  # a live capture's tick interval, and so how soon stop() takes effect


def is_capture_file(source: str) -> bool:
    """True when `source` names a file (existing, or a path) rather than an interface."""
    return os.path.exists(source) or os.sep in source or source.endswith((".pcap", ".pcapng", ".cap"))


class PcapSource:
    """Frames of a pcap/pcapng file or a live interface, with an optional BPF filter."""

    __slots__ = ("source", "is_file", "linktype", "stopped", "_handle", "_final_stats")

    def __init__(self, source: str, *, bpf_filter: str | None = None, snaplen: int = 65535,
                 promiscuous: bool = True, buffer_size: int = 0) -> None:
        self.source = source
        self.is_file = is_capture_file(source)
        self.stopped = False
        self._final_stats: tuple[int, int, int] | None = None
        if self.is_file and not os.path.isfile(source):
            raise CaptureError(f"{source}: no such capture file")
        try:
            if self.is_file:
                self._handle = pcap.pcap(source, timestamp_in_ns=True)
            else:
                self._handle = pcap.pcap(source, snaplen=snaplen, promisc=promiscuous,
                                         immediate=True, timestamp_in_ns=True,
                                         buffer_size=buffer_size)
                self._handle.setnonblock(True)
        except OSError as error:
            raise CaptureError(f"{source}: cannot open: {error}") from None
        if bpf_filter:
            try:
                self._handle.setfilter(bpf_filter)
            except OSError as error:
                raise CaptureError(f"{source}: bad BPF filter {bpf_filter!r}: {error}") from None
        datalink = self._handle.datalink()
        self.linktype = DLT_TO_LINKTYPE.get(datalink, datalink)
        if self.linktype not in LINKTYPE_NAMES:
            raise CaptureError(f"{source}: unsupported link type {self.linktype} (supported: "
                               + ", ".join(f"{name} ({t})" for t, name in LINKTYPE_NAMES.items()) + ")")

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        return iter(self._handle) if self.is_file else self._live()

    def _live(self) -> Iterator[tuple[int, bytes | None]]:
        read, fd = self._handle.readpkts, self._handle.fileno()
        last_ns, next_tick = 0, time.monotonic() + TICK_S
        while not self.stopped:
            frames = read()
            if frames:
                yield from frames
                last_ns = frames[-1][0]
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    yield last_ns, None
            elif not select.select((fd,), (), (), TICK_S)[0]:
                next_tick = time.monotonic() + TICK_S
                yield max(time.time_ns(), last_ns), None
        yield from read()  # what the kernel holds at stop() is metered too

    def stop(self) -> None:
        """Ends a live capture's iteration within `TICK_S`."""
        self.stopped = True

    def stats(self) -> tuple[int, int, int]:
        """(received, dropped by the kernel, dropped by the interface) of a live capture."""
        if self._final_stats is not None:
            return self._final_stats
        return (0, 0, 0) if self.is_file else tuple(self._handle.stats())

    def close(self) -> None:
        """Closes the handle; `stats()` then reads as they were last."""
        self._final_stats = self.stats()
        self._handle.close()
