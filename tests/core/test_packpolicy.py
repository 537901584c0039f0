"""Tests for p2pckpt.transfer.packpolicy: when packing chunks pays, from
measured link rates, packing speeds and ratios (no sockets, no clocks)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from p2pckpt.transfer.packpolicy import MARGIN, SAMPLE_EVERY, PackPolicy
from p2pckpt.wire.packing import ZSTD, ZSTD_BYTES2, ZSTD_BYTES4, mask

ALL = mask([ZSTD, ZSTD_BYTES2, ZSTD_BYTES4])
CHUNK = 4 << 20
MB = 1e6

# Measured on this project's benchmark machine (scripts/bench_compress.py):
# ratio (packed/raw) and packing speed (raw bytes/s) per codec.
BF16 = {ZSTD: (0.78, 900 * MB), ZSTD_BYTES2: (0.68, 330 * MB), ZSTD_BYTES4: (0.68, 320 * MB)}
FP32 = {ZSTD: (0.92, 900 * MB), ZSTD_BYTES2: (0.89, 600 * MB), ZSTD_BYTES4: (0.84, 500 * MB)}
RANDOM = {ZSTD: (1.0, 4000 * MB), ZSTD_BYTES2: (1.0, 700 * MB), ZSTD_BYTES4: (1.0, 600 * MB)}


@dataclass
class Link:
    """A connection simulated chunk by chunk: the policy chooses, the codec
    packs at its speed and ratio, the link takes the wire bytes at ``rate``."""

    policy: PackPolicy
    rate: float
    data: dict[int, tuple[float, float]]
    accept: int = ALL
    throttled: float = 0.0  # share of send time spent in the upload throttle
    choices: list[int] = field(default_factory=list)
    wire: int = 0

    def run(self, chunks: int) -> list[int]:
        start = len(self.choices)
        for _ in range(chunks):
            codec = self.policy.choose(self.accept)
            size = CHUNK
            if codec:
                ratio, speed = self.data[codec]
                packed = int(CHUNK * ratio)
                self.policy.packed(codec, CHUNK, packed, CHUNK / speed)
                size = min(packed, CHUNK)
            seconds = size / self.rate
            self.policy.sent(size, seconds, seconds * self.throttled)
            self.wire += size
            self.choices.append(codec)
        return self.choices[start:]


def test_first_chunk_goes_raw() -> None:
    """Nothing is packed before the link has been measured."""
    policy = PackPolicy(ALL)
    assert policy.link_rate is None
    assert policy.choose(ALL) == 0


def test_slow_link_with_bf16_packs_with_byte_grouping() -> None:
    """100 Mbit/s and bf16 weights: packed with 2-byte grouping nearly always."""
    link = Link(PackPolicy(ALL), 12.5 * MB, BF16)
    got = link.run(200)
    assert got[0] == 0
    assert got[-100:].count(ZSTD_BYTES2) >= 90
    assert link.wire < 0.72 * 200 * CHUNK
    assert link.policy.gain(ZSTD_BYTES2) is not None
    assert link.policy.gain(ZSTD_BYTES2) > 1.4  # type: ignore[operator]


def test_slow_link_with_fp32_packs_with_4_byte_grouping() -> None:
    link = Link(PackPolicy(ALL), 12.5 * MB, FP32)
    got = link.run(200)
    assert got[-100:].count(ZSTD_BYTES4) >= 90


def test_fast_link_stays_raw_and_stops_sampling() -> None:
    """At 2 GB/s no codec is fast enough: after one trial, every chunk goes raw."""
    link = Link(PackPolicy(ALL), 2000 * MB, BF16)
    got = link.run(300)
    assert sum(1 for c in got if c) == 1  # the one trial that measured a codec
    assert got[-250:] == [0] * 250


def test_gigabit_link_packs_only_with_a_codec_fast_enough() -> None:
    """At 1 GB/s the grouped codecs (330 MB/s) cannot keep up; nothing pays
    by the 10% margin, and the link is too fast to bother sampling."""
    link = Link(PackPolicy(ALL), 1000 * MB, BF16)
    got = link.run(200)
    assert got[-150:] == [0] * 150


def test_random_bytes_never_go_packed_but_are_sampled_one_chunk_in_16() -> None:
    """Random data (ratio 1) is never worth it; trials keep their cadence."""
    link = Link(PackPolicy(ALL), 12.5 * MB, RANDOM)
    got = link.run(16 * 20 + 1)
    trials = [i for i, c in enumerate(got) if c]
    assert len(trials) == 20
    assert all(b - a == SAMPLE_EVERY for a, b in itertools.pairwise(trials))
    assert {got[i] for i in trials} == {ZSTD, ZSTD_BYTES2, ZSTD_BYTES4}  # each tried in turn


def test_codecs_the_peer_does_not_accept_are_never_chosen() -> None:
    assert Link(PackPolicy(ALL), 12.5 * MB, BF16, accept=0).run(50) == [0] * 50
    only_zstd = Link(PackPolicy(ALL), 12.5 * MB, BF16, accept=mask([ZSTD])).run(100)
    assert set(only_zstd) == {0, ZSTD} and only_zstd[-50:] == [ZSTD] * 50
    unknown_bits = Link(PackPolicy(ALL), 12.5 * MB, BF16, accept=0xFFFFFFF0).run(50)
    assert unknown_bits == [0] * 50  # bits 4 and up name codecs we do not have


def test_a_node_without_codecs_never_packs() -> None:
    assert Link(PackPolicy(0), 12.5 * MB, BF16).run(50) == [0] * 50


def test_estimates_follow_the_data() -> None:
    """bf16 shards, then a run of random bytes (optimizer state), then bf16
    again: packing stops within a few chunks and resumes at the next trials."""
    link = Link(PackPolicy(ALL), 12.5 * MB, BF16)
    assert link.run(64)[-16:].count(ZSTD_BYTES2) >= 15
    link.data = RANDOM
    got = link.run(64)
    assert ZSTD_BYTES2 not in got[8:] or got[8:].count(ZSTD_BYTES2) <= 2  # trials only
    assert got[-32:].count(0) >= 30
    link.data = BF16
    got = link.run(64)
    assert got[-16:].count(ZSTD_BYTES2) >= 15
    assert got.index(ZSTD_BYTES2) <= 2 * SAMPLE_EVERY


def test_estimates_follow_the_link() -> None:
    """A link that speeds up from 100 Mbit/s to 2 GB/s: packing stops."""
    link = Link(PackPolicy(ALL), 12.5 * MB, BF16)
    assert link.run(50)[-10:].count(ZSTD_BYTES2) >= 9  # (one may be a trial of another)
    link.rate = 2000 * MB
    assert link.run(50)[-30:] == [0] * 30
    link.rate = 12.5 * MB
    assert link.run(80)[-10:].count(ZSTD_BYTES2) >= 9


def test_loopback_peer_packs_only_when_the_upload_throttle_sets_the_pace() -> None:
    """On this machine the "link" is our own CPU: packing only adds to it,
    unless the upload throttle is what holds the link back."""
    cpu_bound = Link(PackPolicy(ALL, local=True), 12.5 * MB, BF16, throttled=0.0)
    assert cpu_bound.run(100) == [0] * 100
    throttled = Link(PackPolicy(ALL, local=True), 4 * MB, BF16, throttled=0.9)
    assert throttled.run(100)[-50:].count(ZSTD_BYTES2) >= 45


def test_gain_is_the_pipelined_rate_over_the_link_rate() -> None:
    """gain = min(speed, link / ratio) / link, used only from MARGIN up."""
    policy = PackPolicy(ALL)
    policy.sent(10_000_000, 1.0)
    policy.packed(ZSTD, 1000, 500, 1000 / 8e6)  # 8 MB/s: slower than the link
    assert policy.gain(ZSTD) == 0.8
    policy2 = PackPolicy(ALL)
    policy2.sent(10_000_000, 1.0)
    policy2.packed(ZSTD, 1000, 500, 1000 / 1e9)
    assert policy2.gain(ZSTD) == 2.0
    assert MARGIN == 1.1
