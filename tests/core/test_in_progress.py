"""Streaming publish (issue 21), pure parts: the signed in-progress manifest
(a mark that cannot be stripped, forged or taken for a version) and which
files of a checkpoint still being written count as finished."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgpack
import pytest

from p2pckpt.config import WatchSpec
from p2pckpt.daemon.completion import (
    MAX_STREAM_UPDATES,
    STREAM_INTERVAL,
    Snapshot,
    finished_files,
    should_offer,
    stream_grace,
    unchanged_since,
)
from p2pckpt.errors import BadSignature, ManifestError
from p2pckpt.manifest.manifest import (
    IN_PROGRESS_CONTEXT,
    IN_PROGRESS_KEY,
    SIGN_CONTEXT,
    sign,
    verify,
    verify_any,
    verify_in_progress,
)
from p2pckpt.transfer.progress_book import MAX_SUPERSEDED, ProgressBook
from tests.core.test_manifest import KEY, OTHER_KEY, make_manifest


def in_progress(sequence: int = 7, **changes: object):  # type: ignore[no-untyped-def]
    base = make_manifest(**changes)
    meta = {**base.meta, IN_PROGRESS_KEY: str(sequence)}
    return sign(dataclasses.replace(base, meta=meta), KEY)


def test_an_in_progress_manifest_verifies_only_as_in_progress() -> None:
    manifest, envelope = in_progress()
    assert verify_in_progress(envelope).in_progress == 7 == manifest.in_progress
    with pytest.raises(BadSignature):
        verify(envelope)  # never a version, on this release or an older one
    _, final = sign(make_manifest(), KEY)
    assert verify(final).in_progress is None
    with pytest.raises(BadSignature):
        verify_in_progress(final)
    assert verify_any(envelope).in_progress == 7 and verify_any(final).in_progress is None


def _envelope(body: bytes, context: bytes, key=KEY) -> bytes:  # type: ignore[no-untyped-def]
    import blake3

    signature = key.sign(context + blake3.blake3(body).digest())
    return msgpack.packb(["p2pckpt-signed-manifest", 1, body, signature], use_bin_type=True)


def test_the_mark_can_be_neither_stripped_nor_added() -> None:
    _, envelope = in_progress()
    _, _, body, signature = msgpack.unpackb(envelope, raw=False)
    doc = msgpack.unpackb(body, raw=False)
    doc[6] = [kv for kv in doc[6] if kv[0] != IN_PROGRESS_KEY]  # strip the mark
    stripped = msgpack.packb(doc, use_bin_type=True)
    forged = msgpack.packb(["p2pckpt-signed-manifest", 1, stripped, signature], use_bin_type=True)
    for check in (verify, verify_in_progress):
        with pytest.raises(BadSignature):
            check(forged)
    # Marked but signed as a finished version, or unmarked but signed in progress: refused.
    with pytest.raises(BadSignature):
        verify(_envelope(body, SIGN_CONTEXT))
    with pytest.raises(BadSignature):
        verify_in_progress(_envelope(stripped, IN_PROGRESS_CONTEXT))
    with pytest.raises(BadSignature):  # another key
        verify_in_progress(_envelope(body, IN_PROGRESS_CONTEXT, OTHER_KEY))


def test_a_tampered_in_progress_manifest_is_refused() -> None:
    _, envelope = in_progress()
    for i in range(0, len(envelope), max(1, len(envelope) // 64)):
        bad = bytearray(envelope)
        bad[i] ^= 0x01
        with pytest.raises((BadSignature, ManifestError)):
            verify_in_progress(bytes(bad))


@pytest.mark.parametrize("sequence", ["0", "01", "-1", "x", "1" * 17, ""])
def test_a_malformed_sequence_is_refused(sequence: str) -> None:
    base = make_manifest()
    bad = dataclasses.replace(base, meta={**base.meta, IN_PROGRESS_KEY: sequence})
    with pytest.raises(ManifestError):
        sign(bad, KEY)


def test_the_book_offers_the_newest_per_name_and_withdraws_by_location() -> None:
    book = ProgressBook()
    first, env1 = in_progress(1)
    second, env2 = in_progress(2)
    book.offer(first, env1, Path("/w/step-3"))
    book.offer(second, env2, Path("/w/step-3"))
    # the older one is no longer offered, but a follower fetching it finishes
    assert book.get(first.root) is not None and book.get(second.root) is not None
    found = book.find("llama-7b")
    assert found is not None and found.envelope == env2
    book.withdraw("llama-7b", Path("/w/other"))  # not its folder: stays
    assert book.find("llama-7b") is not None
    book.withdraw("llama-7b", Path("/w/step-3"))
    assert book.find("llama-7b") is None and book.get(second.root) is None
    assert book.get(first.root) is None


def test_a_published_version_stops_being_offered_but_its_chunks_are_served() -> None:
    book = ProgressBook()
    first, env1 = in_progress(1)
    book.offer(first, env1, Path("/w/step-3"))
    book.retire("llama-7b", Path("/w/other"))  # not its folder: stays offered
    assert book.find("llama-7b") is not None
    book.retire("llama-7b", Path("/w/step-3"))
    assert book.find("llama-7b") is None and book.get(first.root) is not None
    for n in range(2, 2 + MAX_SUPERSEDED + 1):  # bounded
        book.offer(*in_progress(n), Path("/w/step-3"))
    assert book.get(first.root) is None


# --- which files are finished -------------------------------------------------------

INDEX = WatchSpec(Path("/w"), "m", complete="index", stream=True)
STABLE = WatchSpec(Path("/w"), "m", complete="stable", stable_seconds=5.0, stream=True)
MARKER = WatchSpec(Path("/w"), "m", complete="marker", marker="DONE", stream=True)
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def snap(
    files: dict[str, tuple[int, int]], whole: frozenset[str] = frozenset(), **kw: object
) -> Snapshot:
    return Snapshot("dir", files, complete_shards=frozenset(whole), **kw)  # type: ignore[arg-type]


def test_a_file_is_finished_once_unchanged_for_the_grace_and_whole() -> None:
    grace = stream_grace(INDEX, whole_shard=True)
    one = snap({SHARDS[0]: (10, 1), SHARDS[1]: (5, 1)}, whole={SHARDS[0]})
    since = unchanged_since(None, one, {}, at=100.0)
    assert since == {SHARDS[0]: 100.0, SHARDS[1]: 100.0}
    assert finished_files(one, since, 100.0 + grace / 2, INDEX) == frozenset()
    # the 2nd shard grows; the 1st stays: its time is kept, the 2nd's restarts
    two = snap({SHARDS[0]: (10, 1), SHARDS[1]: (9, 2)}, whole={SHARDS[0]})
    since = unchanged_since(one, two, since, at=100.0 + grace)
    assert since == {SHARDS[0]: 100.0, SHARDS[1]: 100.0 + grace}
    assert finished_files(two, since, 100.0 + grace, INDEX) == {SHARDS[0]}
    # quiet but its header says it is not whole (preallocated): not finished
    assert finished_files(two, since, 1e9, INDEX) == {SHARDS[0]}


def test_a_whole_shard_needs_less_quiet_time_than_another_file() -> None:
    assert stream_grace(INDEX, whole_shard=True) < stream_grace(INDEX) == 1.0
    files = {SHARDS[0]: (10, 1), "config.json": (3, 1)}
    one = snap(files, whole={SHARDS[0]})
    since = unchanged_since(None, one, {}, at=100.0)
    at = 100.0 + stream_grace(INDEX, whole_shard=True)
    assert finished_files(one, since, at, INDEX) == {SHARDS[0]}
    assert finished_files(one, since, 100.0 + stream_grace(INDEX), INDEX) == set(files)


def test_what_never_counts_as_finished() -> None:
    files = {"a.bin.tmp": (1, 1), "DONE": (0, 1), "config.json": (3, 1)}
    quiet = {p: 0.0 for p in files}
    assert finished_files(snap(files), quiet, 1e9, MARKER) == {"config.json"}  # not the marker
    assert finished_files(snap(files, problem="a link"), quiet, 1e9, MARKER) == frozenset()
    one = Snapshot("file", {"m.pt": (1, 1)})
    assert finished_files(one, {"m.pt": 0.0}, 1e9, STABLE) == frozenset()  # a file is whole or not
    assert stream_grace(STABLE) == 5.0  # the stable rule's own quiet time, per file


def test_offers_are_bounded_in_rate_and_number() -> None:
    a, ab = frozenset({"a"}), frozenset({"a", "b"})
    assert should_offer(a, frozenset(), 0, -math.inf, 0.0)
    assert not should_offer(a, a, 1, 0.0, 10.0)  # nothing new
    assert not should_offer(frozenset(), frozenset(), 0, -math.inf, 0.0)
    assert not should_offer(ab, a, 1, 10.0, 10.0 + STREAM_INTERVAL / 2)  # too soon
    assert should_offer(ab, a, 1, 10.0, 10.0 + STREAM_INTERVAL)
    assert not should_offer(ab, a, MAX_STREAM_UPDATES, -math.inf, 1e9)  # too many


def test_the_announced_epoch_moves_with_each_in_progress_change() -> None:
    """mDNS announces ``book.epoch(catalog epoch)``: a LAN follower hears of
    each new in-progress offer, and of the version published whole, at once."""
    book = ProgressBook()
    seen = [book.epoch(5)]
    book.offer(*in_progress(1), Path("/w/step-3"))
    seen.append(book.epoch(5))
    book.offer(*in_progress(2), Path("/w/step-3"))
    seen.append(book.epoch(5))
    book.retire("llama-7b", Path("/w/step-3"))  # published: the catalog epoch moves too
    seen.append(book.epoch(6))
    assert seen == sorted(set(seen))  # every change is a new, larger number
    book.retire("llama-7b", Path("/w/step-3"))  # nothing offered: no change
    assert book.epoch(6) == seen[-1]


def test_superseded_offers_stop_being_served_when_their_version_leaves_the_catalog() -> None:
    book = ProgressBook()
    older, env1 = in_progress(1)
    book.offer(older, env1, Path("/w/step-3"))
    book.offer(*in_progress(2), Path("/w/step-3"))
    # still being written (not published): kept whatever the catalog says
    assert book.drop_unheld(lambda _loc: False) == 0 and book.get(older.root) is not None
    book.retire("llama-7b", Path("/w/step-3"))
    assert book.drop_unheld(lambda _loc: True) == 0  # published and still held
    assert book.get(older.root) is not None
    assert book.drop_unheld(lambda _loc: False) == 2  # unpublished (or retired, gc)
    assert book.get(older.root) is None
