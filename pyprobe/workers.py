"""Running the meter in N processes, each on its own share of the flows (`--workers N`).

A live capture on Linux is shared by the kernel: each worker's packet socket joins one fanout
group (`capture.PcapSource.share_by_fanout`), which hands every packet to one worker by a
symmetric hash of its addresses and ports. Elsewhere (capture files, other systems) packets are
shared out by a hash of their two IP addresses that is the same both ways, so both directions of
a flow, and every fragment of a datagram, go to one worker. libpcap computes it: each worker
opens the capture with a BPF filter, so a worker's Python code sees only its own packets.
Worker k > 0 takes the packets whose hash is k; worker 0 takes every other frame (hash 0, non-IP,
or shaped so the filter cannot find its addresses). A frame too short to hold its IP addresses
(undecodable anyway) is seen by no worker: libpcap rejects it for every filter, so it is missing
from the skipped-frame counts instead of counted as truncated.

Linux takes the VLAN tag out of a frame it receives before a live capture's filter sees it, so
there the shares leave out the tagged case a file needs (with it, libpcap's live code for `vlan`
lost most tagged frames from every share). A live capture's workers (`pyprobe run`) have a parent
that opens nothing: it passes the signals it gets on to them, and stops them all when one fails.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, TypeVar

from .errors import PyprobeError

R = TypeVar("R")
Work = Callable[[int, "str | None", "Rendezvous"], R]

ETHERNET = 1
# Keywords after which libpcap reads the rest of an expression further into the frame.
SHIFTING_KEYWORDS = re.compile(r"\b(vlan|mpls|pppoes|pppoed|geneve)\b")
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what a live run's parent passes on


def _fold(word: str) -> str:
    """The low byte of a 32-bit word folded onto itself (BPF arithmetic is 32-bit unsigned)."""
    half = f"({word} ^ ({word} >> 16))"
    return f"(({half} ^ ({half} >> 8)) & 0xff)"


def _hash_is(index: int, count: int) -> str:
    ipv4 = f"(ip and {_fold('(ip[12:4] ^ ip[16:4])')} % {count} = {index})"
    ipv6_words = " ^ ".join(f"ip6[{offset}:4]" for offset in range(8, 40, 4))
    ipv6 = f"(ip6 and {_fold(f'({ipv6_words})')} % {count} = {index})"
    return f"{ipv4} or {ipv6}"


def shard_filter(indices: range, count: int, linktype: int, tags_stripped: bool = False) -> str:
    """The BPF expression of the packets whose address hash (mod `count`) is one of `indices`;
    `tags_stripped`: the filter sees frames without their outer VLAN tag (a live Linux capture:
    the kernel moves it out of the frame before filtering)."""
    same = " or ".join(_hash_is(index, count) for index in indices)
    if linktype != ETHERNET or tags_stripped:
        return same
    # libpcap reads everything after `vlan` one tag further in: the tagged case must come last.
    return f"{same} or (vlan and ({same}))"


def worker_filters(count: int, linktype: int, bpf_filter: str | None = None, *,
                   tags_stripped: bool = False) -> list[str | None]:
    """The BPF filter each of `count` workers reads with: disjoint shares covering the capture."""
    if count == 1:
        return [bpf_filter]
    if bpf_filter and SHIFTING_KEYWORDS.search(bpf_filter):
        raise PyprobeError(f"BPF filter {bpf_filter!r}: with more than one worker the filter "
                           "cannot use vlan, mpls, pppoes, pppoed or geneve (they move the "
                           "offsets the workers' share of the packets is read at)")
    shares = [f"not ({shard_filter(range(1, count), count, linktype, tags_stripped)})"]
    shares += [shard_filter(range(index, index + 1), count, linktype, tags_stripped)
               for index in range(1, count)]
    return [f"({bpf_filter}) and ({share})" if bpf_filter else share for share in shares]


class Rendezvous:
    """Where a worker meets the others: at the end of a capture file, and to join a group."""

    __slots__ = ("index", "_clocks", "_barrier", "_turn")

    def __init__(self, index: int, clocks: Any, barrier: Any, turn: Any) -> None:
        self.index = index
        self._clocks, self._barrier, self._turn = clocks, barrier, turn

    def end_clock(self, clock: int) -> int:
        """Waits until every worker has called it, and returns the latest clock, so that all of
        them end the capture at the same time."""
        self._clocks[self.index] = clock
        self._barrier.wait()
        return max(self._clocks)

    def together(self, action: Callable[[], None]) -> None:
        """Runs `action` while no other worker runs its own, then waits until all have."""
        with self._turn:
            action()
        self._barrier.wait()

    def leave(self) -> None:
        """Tells the others not to wait for this worker (they stop: one has failed)."""
        self._barrier.abort()


class Supervisor(Protocol):
    """What a live run's parent does besides waiting for its workers."""

    def signalled(self, signum: int) -> None:
        """A signal the workers were sent (in the parent's signal handler)."""

    def tick(self) -> None:
        """About once a second while the workers run."""


def run_sharded(count: int, linktype: int, bpf_filter: str | None, work: Work, *,
                live: bool = False, tags_stripped: bool = False, shares: bool = True,
                supervisor: Supervisor | None = None) -> list[R]:
    """`work(index, share_filter, rendezvous)` in `count` forked processes; their results, in
    order. With `shares`, each worker's filter is its share of `bpf_filter` (`worker_filters`),
    else it is `bpf_filter` (the workers share the packets otherwise: a fanout group). A
    worker's failure is raised here, as a PyprobeError naming the worker, once all have ended.

    `live` workers run until told to stop: SIGTERM, SIGINT and SIGHUP sent to the parent are
    passed on to each (and to the `supervisor`), and when one fails the others get SIGTERM. They
    start with these signals blocked, so that none is lost or kills a worker before it can
    handle them: the work unblocks them once its handlers are in place. `tags_stripped`: as
    for `worker_filters`.
    """
    filters = (worker_filters(count, linktype, bpf_filter, tags_stripped=tags_stripped)
               if shares else [bpf_filter] * count)
    context = multiprocessing.get_context("fork")  # the work may be a closure: nothing is pickled
    clocks = context.Array("q", count, lock=False)
    barrier, turn = context.Barrier(count), context.Lock()
    running: dict[Connection, tuple[int, Any]] = {}
    relayed = RELAYED if live else ()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, relayed)
    try:
        for index, share in enumerate(filters):
            receiver, sender = context.Pipe(duplex=False)
            rendezvous = Rendezvous(index, clocks, barrier, turn)
            process = context.Process(target=_worker, name=f"pyprobe-worker-{index}",
                                      args=(sender, work, index, share, rendezvous))
            process.start()
            sender.close()
            running[receiver] = index, process
        with _passed_on(relayed, running, supervisor):
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # those held meanwhile pass on now
            outcomes = _outcomes(running, barrier, live, supervisor)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    failures = [f"worker {i}: {detail}" for i, (ok, detail) in sorted(outcomes.items()) if not ok]
    if failures:
        raise PyprobeError("; ".join(failures))
    return [result for _, (_, result) in sorted(outcomes.items())]


def _outcomes(running: dict[Connection, tuple[int, Any]], barrier: Any, live: bool,
              supervisor: Supervisor | None) -> dict[int, tuple[bool, Any]]:
    """Each worker's (ok, result or error), as they end; a failure stops the others."""
    outcomes = {}
    while running:
        ended = wait(list(running), None if supervisor is None else 1)
        if supervisor is not None:
            supervisor.tick()
        for receiver in ended:
            index, process = running.pop(receiver)  # before join: its pid may then be reused
            try:
                outcome = receiver.recv()
            except EOFError:  # it died before it could answer
                outcome = None
            process.join()
            outcome = outcome or (False, _death(process.exitcode))
            if not outcome[0]:
                barrier.abort()
                for _, other in running.values() if live else ():
                    os.kill(other.pid, signal.SIGTERM)
            outcomes[index] = outcome
    return outcomes


def _death(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


@contextlib.contextmanager
def _passed_on(signals: tuple[signal.Signals, ...], running: dict[Connection, tuple[int, Any]],
               supervisor: Supervisor | None) -> Iterator[None]:
    """While inside, `signals` received here are sent on to every running worker."""
    def pass_on(signum: int, frame: object) -> None:
        for _, process in running.values():
            os.kill(process.pid, signum)
        if supervisor is not None:
            supervisor.signalled(signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _worker(sender: Connection, work: Work, index: int, share: str | None,
            rendezvous: Rendezvous) -> None:
    try:
        outcome = (True, work(index, share, rendezvous))
    except threading.BrokenBarrierError:
        outcome = (False, "stopped: another worker failed")
    except PyprobeError as error:
        outcome = (False, str(error))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which decides
        outcome = (False, f"{type(error).__name__}: {error}")
    if not outcome[0]:
        rendezvous.leave()
    sender.send(outcome)
    sender.close()
