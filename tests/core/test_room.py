"""A pull's budget of chunk bodies grows with its sources, within a bound
(issue 21: four hosts sharing 24 MiB each ran their uplinks at 65-80%)."""

from __future__ import annotations

from p2pckpt.manifest.chunker import CHUNK_SIZE
from p2pckpt.transfer.buffers import MAX_ROOM_BYTES, ROOM_BYTES, room_for


def test_one_source_keeps_the_budget_of_issue_16() -> None:
    assert room_for(0) == room_for(1) == ROOM_BYTES == 6 * CHUNK_SIZE


def test_each_further_source_adds_two_chunks_up_to_the_bound() -> None:
    assert room_for(2) == 8 * CHUNK_SIZE
    assert room_for(4) == MAX_ROOM_BYTES == 12 * CHUNK_SIZE
    assert room_for(16) == room_for(1000) == MAX_ROOM_BYTES
