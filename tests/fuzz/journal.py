"""The resume journal: ``journal.parse`` on any file content.

Contract (store/journal.py): the set of chunk indices the journal claims, or
``ResumeStateInvalid`` if it is for another manifest or not a journal. Also
checked: every claimed index is below the chunk count and backed by its
record (writing the claimed records out again parses to the same set), and
parsing stops at the first bad record.

Input: the chunk count the caller expects (u32), then the file.
"""

from __future__ import annotations

from p2pckpt.errors import ResumeStateInvalid
from p2pckpt.store import journal
from tests.fuzz._input import Input
from tests.fuzz.values import ROOT

NAME = "journal"
MAX_LEN = 1 << 16


def one_input(data: bytes) -> None:
    inp = Input(data)
    count = inp.uint(4)
    raw = inp.rest()
    try:
        done = journal.parse(raw, ROOT, count)
    except ResumeStateInvalid:
        return
    assert raw.startswith(journal.header(ROOT, count))
    assert all(0 <= i < count for i in done)
    records = raw[journal.HEADER_SIZE :]
    prefix = set()  # the indices of the leading run of valid records
    for pos in range(0, len(records) - journal.RECORD_SIZE + 1, journal.RECORD_SIZE):
        index = int.from_bytes(records[pos : pos + 4], "big")
        if index >= count or records[pos : pos + journal.RECORD_SIZE] != journal.record(
            ROOT, index
        ):
            break
        prefix.add(index)
    assert done == prefix
    again = journal.header(ROOT, count) + b"".join(journal.record(ROOT, i) for i in sorted(done))
    assert journal.parse(again, ROOT, count) == done


def seeds() -> list[bytes]:
    """Real journals: empty, some records, a torn tail, a garbled record, repeats."""
    out = []
    for count, indices, tail in (
        (10, [], b""),
        (10, [3, 0, 9, 3], b""),
        (10, [1, 2], b"\x00\x00\x00"),
        (1 << 19, [0, 1 << 18, (1 << 19) - 1], b""),
        (5, [4, 1], journal.record(ROOT, 7) + journal.record(ROOT, 2)),
    ):
        body = journal.header(ROOT, count) + b"".join(journal.record(ROOT, i) for i in indices)
        out.append(count.to_bytes(4, "big") + body + tail)
    return out
