"""Tests for p2pckpt.manifest.formats: chunk cuts for GGUF files and zip
archives, so a resized tensor moves no other tensor's chunks."""

from __future__ import annotations

import io
import os
import random
import struct
import zipfile

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.manifest.formats import gguf_cuts, zip_cuts
from p2pckpt.manifest.layout import MIN_SEGMENT, plan

MIB = 1 << 20


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf(tensors: list[bytes], alignment: int | None = None) -> bytes:
    """A GGUF v3 file: metadata of several value types (a string array
    among them), then the tensors at aligned offsets."""
    align = alignment or 32
    kv = [
        _s("general.name") + struct.pack("<I", 8) + _s("test"),
        _s("tokenizer.tokens") + struct.pack("<IIQ", 9, 8, 3) + _s("a") + _s("bc") + _s("d"),
        _s("layers") + struct.pack("<IQ", 10, 7),
        _s("scale") + struct.pack("<If", 6, 0.5),
    ]
    if alignment is not None:
        kv.append(_s("general.alignment") + struct.pack("<II", 4, alignment))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    offset = 0
    for i, t in enumerate(tensors):
        head += _s(f"blk.{i}") + struct.pack("<IQIQ", 1, len(t), 24, offset)
        offset += -(-len(t) // align) * align
    out = head + bytes(-len(head) % align)
    for t in tensors:
        out += t + bytes(-len(t) % align)
    return out


def zipped(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def chunks(data: bytes, cuts: list[int] | None) -> list[bytes]:
    return [chunk_hash(data[o : o + n]) for o, n in plan(len(data), cuts)]


def reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda offset, n: data[offset : offset + n]


def test_gguf_cuts_at_its_data_and_each_large_tensor() -> None:
    tensors = [os.urandom(3 * MIB), os.urandom(100), os.urandom(2 * MIB)]
    data = gguf(tensors)
    cuts = gguf_cuts(reader(data), len(data))
    assert cuts is not None
    start = cuts[1]
    assert data[start : start + 3 * MIB] == tensors[0]
    # a cut at the 100-byte tensor (a MiB or more after the last); the third,
    # 128 bytes after it, shares its segment
    assert cuts == [0, start, start + 3 * MIB]
    assert data[start + 3 * MIB + 128 : start + 3 * MIB + 128 + 2 * MIB] == tensors[2]


def test_a_resized_gguf_tensor_moves_no_other_tensors_chunks() -> None:
    rng = random.Random(1)
    tensors = [rng.randbytes(5 * MIB) for _ in range(4)]
    before = gguf(tensors)
    tensors[1] = rng.randbytes(5 * MIB + 12345)
    after = gguf(tensors)
    old = set(chunks(before, gguf_cuts(reader(before), len(before))))
    new = chunks(after, gguf_cuts(reader(after), len(after)))
    fresh = [c for c in new if c not in old]
    # the header, and tensor 1's two chunks: nothing of tensors 0, 2 and 3
    assert len(fresh) == 1 + 2
    fixed = set(chunks(before, None))
    assert sum(c not in fixed for c in chunks(after, None)) > len(fresh)  # fixed cuts: more


def test_gguf_alignment_is_read_from_its_metadata() -> None:
    tensors = [os.urandom(2 * MIB), os.urandom(2 * MIB)]
    data = gguf(tensors, alignment=4096)
    cuts = gguf_cuts(reader(data), len(data))
    assert cuts is not None and all(c % 4096 == 0 for c in cuts)
    assert data[cuts[2] : cuts[2] + 2 * MIB] == tensors[1]


def test_zip_cuts_at_large_entries_and_the_central_directory() -> None:
    big = os.urandom(2 * MIB)
    data = zipped({"archive/data.pkl": b"pickle" * 10, "archive/data/0": big, "v": b"3"})
    cuts = zip_cuts(reader(data), len(data))
    assert cuts is not None
    # the pickle shares chunk 0; the big entry's header, then its data, are cut off
    assert data[cuts[1] : cuts[1] + 4] == b"PK\x03\x04"
    assert data[cuts[2] : cuts[2] + len(big)] == big
    assert data[cuts[-1] : cuts[-1] + 4] == b"PK\x01\x02"  # the central directory


def test_a_resized_zip_entry_moves_no_other_entrys_chunks() -> None:
    rng = random.Random(2)
    entries = {f"archive/data/{i}": rng.randbytes(3 * MIB) for i in range(4)}
    before = zipped({"archive/data.pkl": b"p" * 500, **entries})
    entries["archive/data/1"] = rng.randbytes(3 * MIB + 777)
    after = zipped({"archive/data.pkl": b"p" * 501, **entries})
    old = set(chunks(before, zip_cuts(reader(before), len(before))))
    new = plan(len(after), zip_cuts(reader(after), len(after)))
    fresh = sum(n for (o, n) in new if chunk_hash(after[o : o + n]) not in old)
    # entry 1 (3 MiB + 777), the pickle, and the small tails that hold the next
    # entry's local header and the central directory
    assert 3 * MIB < fresh < 3 * MIB + 2 * MIN_SEGMENT // 8


def test_not_gguf_or_zip_gets_no_cuts() -> None:
    data = os.urandom(1 << 16)
    assert gguf_cuts(reader(data), len(data)) is None
    assert zip_cuts(reader(data), len(data)) is None
    assert gguf_cuts(reader(b"GGUF"), 4) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 600))
def test_damaged_headers_give_no_cuts_or_sane_ones(noise: bytes, at: int) -> None:
    """Any bytes after a format's magic: None, or cuts inside the file, in
    order, never an exception."""
    good_gguf = gguf([os.urandom(300), os.urandom(300)])
    good_zip = zipped({"a": b"x" * 300, "b": b"y" * 300})
    for good, cut in ((good_gguf, gguf_cuts), (good_zip, zip_cuts)):
        data = good[:at] + noise + good[at + len(noise) :]
        got = cut(reader(data), len(data))
        assert got is None or (got == sorted(set(got)) and all(0 <= c < len(data) for c in got))
        short = data[: at or 1]
        got = cut(reader(short), len(short))
        assert got is None or all(0 <= c < len(short) for c in got)
