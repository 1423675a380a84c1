"""Packet sampling: 1-in-N of the captured frames go on to the meter, the others are counted.

Two selectors of 1 in N (what softflowd's `-s N`, nProbe's `-S` and pmacct's `sampling_rate`
configure):
- **deterministic** (RFC 5475 systematic count-based): the 1st, (N+1)th, (2N+1)th... frame;
- **random** (RFC 5475 uniform probabilistic): each frame with probability 1/N, independently.
  The gap to the next selected frame is drawn once per selected frame (geometric), so the
  frames between cost a countdown, not a random number each.

The sampler sits between the capture and the decoder: frames not selected are never decoded nor
metered, only counted (`sampled_out`, and their captured octets). A live capture's ticks pass
through. Collectors scale the counts by the interval N (`export/options.py`, sampler record).

>>> sampler = Sampler(3)
>>> [ts for ts, _ in sampler.select(iter([(t, b"x") for t in range(7)]))]
[0, 3, 6]
>>> sampler.sampled_out, sampler.sampled_out_octets
(4, 4)
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator

MODES = ("deterministic", "random")
ALGORITHMS = {"deterministic": 1, "random": 2}
"""NetFlow v9 samplingAlgorithm (IE 35) of each mode: 1 deterministic, 2 random (RFC 3954)."""
MAX_RATE = 2**31 - 1


class Sampler:
    """Selects 1 in `rate` frames, `mode` deterministic or random (`seed`: a repeatable one)."""

    __slots__ = ("rate", "mode", "sampled_out", "sampled_out_octets", "_random", "_skip",
                 "_log_keep")

    def __init__(self, rate: int, mode: str = "deterministic", seed: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"sampling mode {mode!r}: expected one of {', '.join(MODES)}")
        if not 1 <= rate <= MAX_RATE:
            raise ValueError(f"sampling rate {rate}: expected an integer from 1 to {MAX_RATE}")
        self.rate = rate
        self.mode = mode
        self.sampled_out = 0
        """Frames not selected."""
        self.sampled_out_octets = 0
        """Their captured octets (the frames were not decoded: no IP lengths)."""
        self._random = random.Random(seed) if mode == "random" else None
        self._log_keep = math.log1p(-1 / rate) if rate > 1 else 0.0  # log(1 - p)
        # Frames to pass over before the next one selected: none before the first,
        # deterministically; a draw, randomly.
        self._skip = self._next_skip() if self._random is not None else 0

    @property
    def algorithm(self) -> int:
        """samplingAlgorithm (IE 35): 1 deterministic, 2 random."""
        return ALGORITHMS[self.mode]

    def _next_skip(self) -> int:
        """Frames between this selected one and the next: N - 1, or geometric with p = 1/N."""
        if self._random is None:
            return self.rate - 1
        if self.rate == 1:
            return 0
        return int(math.log(1.0 - self._random.random()) / self._log_keep)

    def select(self, frames: Iterator[tuple[int, bytes | None]]) -> Iterator[tuple[int, bytes | None]]:
        """The selected (ts_ns, frame) pairs of `frames`, and every tick (frame None). The
        count goes on where the last call's left it (capture.read_on's frames)."""
        skip = self._skip
        try:
            for item in frames:
                frame = item[1]
                if frame is None:
                    yield item
                elif skip:
                    skip -= 1
                    self.sampled_out += 1
                    self.sampled_out_octets += len(frame)
                else:
                    skip = self._next_skip()
                    yield item
        finally:  # the frames ended, or the caller let go of the iterator
            self._skip = skip
