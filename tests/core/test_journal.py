"""Tests for p2pckpt.store.journal: the resume journal format, torn tails and binding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.errors import ResumeStateInvalid
from p2pckpt.store.journal import HEADER_SIZE, RECORD_SIZE, header, parse, record

PROPERTY = settings(max_examples=200, database=None, deadline=None)

ROOT = bytes(range(32))
OTHER_ROOT = bytes(32)
COUNT = 100


def journal(indices: list[int], root: bytes = ROOT, count: int = COUNT) -> bytes:
    return header(root, count) + b"".join(record(root, i) for i in indices)


def test_round_trip() -> None:
    """A header plus records parses back to the set of recorded indices."""
    assert parse(journal([0, 5, 99, 7]), ROOT, COUNT) == {0, 5, 99, 7}


def test_header_only_is_empty() -> None:
    """A journal with no records claims nothing."""
    assert parse(header(ROOT, COUNT), ROOT, COUNT) == set()
    assert len(header(ROOT, COUNT)) == HEADER_SIZE


def test_duplicate_records_are_harmless() -> None:
    """Recording a chunk twice claims it once."""
    assert parse(journal([3, 3, 4]), ROOT, COUNT) == {3, 4}


def test_torn_tail_keeps_whole_records() -> None:
    """Every truncation keeps exactly the whole records before the cut."""
    indices = [10, 20, 30, 40]
    data = journal(indices)
    for cut in range(HEADER_SIZE, len(data) + 1):
        whole = (cut - HEADER_SIZE) // RECORD_SIZE
        assert parse(data[:cut], ROOT, COUNT) == set(indices[:whole])


@pytest.mark.parametrize("cut", [0, 1, 4, HEADER_SIZE - 1])
def test_torn_header_is_invalid(cut: int) -> None:
    """A journal cut inside its header is not a journal."""
    with pytest.raises(ResumeStateInvalid):
        parse(journal([1, 2])[:cut], ROOT, COUNT)


@pytest.mark.parametrize("offset", range(RECORD_SIZE))
def test_garbled_record_stops_parsing(offset: int) -> None:
    """A record with any corrupted byte ends the list there, even if later records are good."""
    indices = [1, 2, 3, 4]
    data = bytearray(journal(indices))
    data[HEADER_SIZE + 2 * RECORD_SIZE + offset] ^= 0x40
    assert parse(bytes(data), ROOT, COUNT) == {1, 2}


def test_record_for_another_root_stops_parsing() -> None:
    """A record written for another manifest does not validate under this one."""
    data = journal([1]) + record(OTHER_ROOT, 2) + record(ROOT, 3)
    assert parse(data, ROOT, COUNT) == {1}


def test_index_out_of_range_stops_parsing() -> None:
    """A well-formed record for an index beyond the chunk count ends the list."""
    data = header(ROOT, 5) + record(ROOT, 1) + record(ROOT, 5) + record(ROOT, 2)
    assert parse(data, ROOT, 5) == {1}


def test_zero_filled_tail_stops_parsing() -> None:
    """A tail of zero bytes (a preallocated or torn page) claims nothing."""
    data = journal([1, 2]) + bytes(4 * RECORD_SIZE)
    assert parse(data, ROOT, COUNT) == {1, 2}


@pytest.mark.parametrize(
    ("data", "root", "count"),
    [
        (journal([1], root=OTHER_ROOT), ROOT, COUNT),
        (journal([1], count=COUNT + 1), ROOT, COUNT),
        (b"P2PX" + journal([1])[4:], ROOT, COUNT),
        (journal([1])[:4] + b"\x02" + journal([1])[5:], ROOT, COUNT),
        (bytes(HEADER_SIZE + RECORD_SIZE), ROOT, COUNT),
    ],
    ids=["wrong-root", "wrong-count", "wrong-magic", "wrong-format", "zeros"],
)
def test_foreign_journal_is_invalid(data: bytes, root: bytes, count: int) -> None:
    """A journal for another manifest, or not a journal, raises ResumeStateInvalid."""
    with pytest.raises(ResumeStateInvalid):
        parse(data, root, count)


@PROPERTY
@given(
    root=st.binary(min_size=32, max_size=32),
    count=st.integers(1, (1 << 32) - 1),
    data=st.data(),
)
def test_parse_returns_exactly_what_was_written(
    root: bytes, count: int, data: st.DataObject
) -> None:
    """For any list of valid indices written, parse returns exactly that set."""
    indices = data.draw(st.lists(st.integers(0, count - 1), max_size=50))
    assert parse(journal(indices, root, count), root, count) == set(indices)


@PROPERTY
@given(
    root=st.binary(min_size=32, max_size=32),
    indices=st.lists(st.integers(0, COUNT - 1), max_size=30),
    data=st.data(),
)
def test_any_truncation_gives_a_prefix(
    root: bytes, indices: list[int], data: st.DataObject
) -> None:
    """Any truncation past the header parses to the whole records before the cut, a subset."""
    full = journal(indices, root)
    cut = data.draw(st.integers(HEADER_SIZE, len(full)))
    got = parse(full[:cut], root, COUNT)
    assert got == set(indices[: (cut - HEADER_SIZE) // RECORD_SIZE])
    assert got <= set(indices)
