"""When packing a chunk pays, per seeder connection (issue 7). Pure: bytes
and seconds in, decisions out.

Sending a chunk raw moves it at the link rate ``L`` the sender sees (wire
bytes over the time spent blocked sending them, upload throttle included,
counted only while responses are queued behind the link). Packing it with a
codec that keeps a fraction ``r`` of the bytes and packs ``s`` input
bytes/s moves it at ``min(s, L / r)``. A codec is used when that beats ``L``
by ``MARGIN``; so on a link of GB/s packing stays off (zstd packs bf16 at
a few hundred MB/s per core), on a 100 Mbit link bf16 weights go packed,
and random bytes (``r`` about 1) never do.

A peer on this very machine (loopback) has no network in between: its
"link" is our own CPU and memory, which packing only burdens more, so such
a connection packs only while the upload throttle sets its pace.

Estimates are decayed sums (recent chunks weigh most). The first chunks go
raw while the link is measured; then one chunk in SAMPLE_EVERY tries a
codec that is not in use (one never tried first), so the ratios follow the
data and a codec in use is re-measured on every chunk. Sampling stops while
the link is faster than the fastest codec measured could ever help.
"""

from __future__ import annotations

import math
from typing import Final

MARGIN: Final = 1.10  # packed must be at least 10% faster than raw
SAMPLE_EVERY: Final = 16  # one chunk in this many tries a codec not in use
WARMUP_SENDS: Final = 1  # link samples before any chunk is packed
LINK_DECAY: Final = 0.75  # weight left to past link samples at each new one
CODEC_DECAY: Final = 0.5  # weight left to a codec's past samples at each new one
SPEED_SLACK: Final = 1.5  # an untried codec may pack up to this much faster
SWITCH: Final = 1.02  # another codec must beat the one in use by this much
THROTTLED: Final = 0.5  # share of send time spent in the throttle that makes it "the link"


class _Decayed:
    """``num / den`` over samples whose weight decays geometrically."""

    __slots__ = ("den", "num", "samples")

    def __init__(self) -> None:
        self.num = 0.0
        self.den = 0.0
        self.samples = 0

    def add(self, num: float, den: float, decay: float) -> None:
        self.num = self.num * decay + num
        self.den = self.den * decay + den
        self.samples += 1

    @property
    def value(self) -> float:
        return self.num / self.den if self.den > 0 else math.inf


class _Codec:
    __slots__ = ("ratio", "speed")

    def __init__(self) -> None:
        self.ratio = _Decayed()  # packed bytes / raw bytes
        self.speed = _Decayed()  # raw bytes / second spent packing


class PackPolicy:
    """Which codec (0: none) to pack each chunk of one connection with.

    ``codecs`` (a bitmask, bit c = codec c, in preference order ``order``)
    are what this side can pack; each request says what the peer accepts.
    """

    def __init__(
        self,
        codecs: int,
        order: tuple[int, ...] = (2, 3, 1),
        *,
        local: bool = False,
        margin: float = MARGIN,
        sample_every: int = SAMPLE_EVERY,
    ) -> None:
        self.codecs = codecs
        self.local = local  # the peer is on this machine
        self.order = tuple(c for c in order if codecs >> c & 1)
        self.margin = margin
        self.sample_every = sample_every
        self._link = _Decayed()
        self._throttled = _Decayed()  # seconds in the upload throttle / seconds sending
        self._stats = {c: _Codec() for c in self.order}
        self._chunks = 0
        self._last_sample = -sample_every
        self._rotation = 0
        self._current = 0  # the codec in use (0: none)

    # -- measurements ------------------------------------------------------------

    def sent(self, wire_bytes: int, seconds: float, throttled: float = 0.0) -> None:
        """A chunk response of ``wire_bytes`` took ``seconds`` to send (of
        which ``throttled`` waiting for the upload throttle) while others were
        queued behind it (so the link, not us, set the pace)."""
        if wire_bytes > 0 and seconds > 0:
            self._link.add(wire_bytes, seconds, LINK_DECAY)
            self._throttled.add(min(throttled, seconds), seconds, LINK_DECAY)

    def packed(self, codec: int, raw: int, packed: int, seconds: float) -> None:
        """``codec`` packed ``raw`` bytes into ``packed`` in ``seconds``."""
        stats = self._stats.get(codec)
        if stats is None or raw <= 0:
            return
        stats.ratio.add(packed, raw, CODEC_DECAY)
        stats.speed.add(raw, max(seconds, 1e-9), CODEC_DECAY)

    @property
    def link_rate(self) -> float | None:
        """Wire bytes/s the link takes, once measured."""
        return self._link.value if self._link.samples >= WARMUP_SENDS else None

    def ratio(self, codec: int) -> float | None:
        stats = self._stats.get(codec)
        return stats.ratio.value if stats is not None and stats.ratio.samples else None

    def speed(self, codec: int) -> float | None:
        stats = self._stats.get(codec)
        return stats.speed.value if stats is not None and stats.speed.samples else None

    def gain(self, codec: int) -> float | None:
        """How many times faster than raw a chunk goes packed with ``codec``."""
        link, ratio, speed = self.link_rate, self.ratio(codec), self.speed(codec)
        if link is None or ratio is None or speed is None:
            return None
        return min(speed, link / max(ratio, 1e-9)) / link

    # -- decisions -----------------------------------------------------------------

    def choose(self, accept: int) -> int:
        """The codec for the next chunk (0: send it raw); ``accept`` is the
        peer's bitmask. Call once per chunk, then report with ``packed``."""
        usable = [c for c in self.order if accept >> c & 1]
        if not usable:
            return 0
        self._chunks += 1
        if self.link_rate is None:
            return 0  # the first chunks go raw: nothing measured yet
        if self.local and self._throttled.value < THROTTLED:
            return 0  # loopback, paced by CPU: packing would only add to it
        best, best_gain = 0, 0.0
        for codec in usable:  # the best gain from MARGIN up; ties go to the earlier codec
            gain = self.gain(codec)
            if gain is not None and gain >= self.margin and gain > best_gain:
                best, best_gain = codec, gain
        held = self.gain(self._current) if self._current in usable else None
        if held is not None and held >= self.margin and best_gain < held * SWITCH:
            best = self._current  # no flapping between codecs that do equally well
        self._current = best
        if self._chunks - self._last_sample >= self.sample_every:
            trial = self._trial(usable, best)
            if trial:
                self._last_sample = self._chunks
                return trial
        return best

    def _trial(self, usable: list[int], best: int) -> int:
        """A codec worth sampling now, or 0."""
        others = [c for c in usable if c != best]
        if not others:
            return 0
        untried = [c for c in others if self.ratio(c) is None]
        speeds = [s for c in usable if (s := self.speed(c)) is not None]
        link = self.link_rate
        assert link is not None
        if speeds and link * self.margin > max(speeds) * SPEED_SLACK:
            return 0  # the link outruns any codec we could try: no point measuring
        if untried:
            return untried[0]
        self._rotation += 1
        return others[self._rotation % len(others)]
