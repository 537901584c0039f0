"""Format-aware chunk cuts for GGUF files and zip archives (issue 18).

``layout.py`` cuts safetensors files at tensor starts; here the same for
two more formats checkpoints come in, so that a tensor resized or an entry
grown moves no other tensor's chunks (each segment is split every
CHUNK_SIZE bytes from its own start, by ``layout.plan``):

- GGUF (llama.cpp, ComfyUI): the header with its metadata and tensor
  table, then each tensor's data (``gguf_cuts``);
- zip archives, which is what ``torch.save`` writes for ``.pt``/``.pth``/
  ``.ckpt`` (and ``.npz``, ``.keras``): each entry's data, whose start
  moves with the padding torch puts in local headers, then the central
  directory (``zip_cuts``). An entry of MIN_SEGMENT or more is always cut
  twice, at its local header and at its data: the pickle before it changes
  with any tensor's size, and its header with its own size and CRC.

Pure: each parser reads through a ``read(offset, n)`` callback and returns
None for anything it does not fully understand, or that is inconsistent
(the file then gets the fixed boundaries). Every count and length is
bounded before it is used: a file is input, not trusted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Final

from p2pckpt.manifest.layout import MIN_SEGMENT

Read = Callable[[int, int], bytes]

MAX_HEADER: Final = 512 << 20  # a GGUF header (metadata, tokenizer, tensor table), at most
MAX_ITEMS: Final = 1 << 24  # tensors, metadata entries, array elements, zip entries
MAX_STRING: Final = 16 << 20
_BLOCK: Final = 1 << 20


class _Bad(Exception):
    """The file is not what its first bytes said (or is beyond our bounds)."""


class _Stream:
    """Sequential little-endian reads through ``read``, a block at a time."""

    def __init__(self, read: Read, size: int, limit: int) -> None:
        self._read, self._limit = read, min(size, limit)
        self.pos = 0
        self._buf, self._at = b"", 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self._limit:
            raise _Bad("past the end")
        lo = self.pos - self._at
        if lo + n > len(self._buf):
            self._at = self.pos
            self._buf = self._read(self.pos, min(max(n, _BLOCK), self._limit - self.pos))
            lo = 0
            if len(self._buf) < n:
                raise _Bad("short read")
        self.pos += n
        return self._buf[lo : lo + n]

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def count(self, fmt: str = "<Q", bound: int = MAX_ITEMS) -> int:
        (n,) = self.unpack(fmt)
        if n > bound:
            raise _Bad("count out of bounds")
        return n


# GGUF value types: fixed sizes, then 8 = string, 9 = array
_GGUF_FIXED: Final = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_U32 = 8, 9, 4


def _gguf_value(s: _Stream, kind: int, depth: int = 0) -> int | None:
    """Skip one value; returns it if it is a u32 (the alignment's type)."""
    if kind in _GGUF_FIXED:
        raw = s.take(_GGUF_FIXED[kind])
        return int.from_bytes(raw, "little") if kind == _GGUF_U32 else None
    if kind == _GGUF_STRING:
        s.take(s.count(bound=MAX_STRING))
    elif kind == _GGUF_ARRAY and depth < 4:
        (inner,) = s.unpack("<I")
        n = s.count()
        if inner in _GGUF_FIXED:
            s.take(n * _GGUF_FIXED[inner])
        else:
            for _ in range(n):
                _gguf_value(s, inner, depth + 1)
    else:
        raise _Bad("unknown value type")
    return None


def gguf_cuts(read: Read, size: int) -> list[int] | None:
    """Offsets where chunks must start in a GGUF (v2 or v3) file: its data
    section, and each tensor's data in it; None if it is not one."""
    s = _Stream(read, size, MAX_HEADER)
    try:
        if s.take(4) != b"GGUF" or s.unpack("<I")[0] not in (2, 3):
            return None
        tensors, entries = s.count(), s.count()
        alignment = 32
        for _ in range(entries):
            key = s.take(s.count(bound=MAX_STRING))
            (kind,) = s.unpack("<I")
            value = _gguf_value(s, kind)
            if key == b"general.alignment" and value is not None:
                alignment = value
        if not 0 < alignment <= 1 << 20:
            return None
        offsets = []
        for _ in range(tensors):
            s.take(s.count(bound=MAX_STRING))  # its name
            dims = s.count("<I", bound=8)
            s.take(8 * dims + 4)  # its shape and type
            offsets.append(s.unpack("<Q")[0])
        data = -(-s.pos // alignment) * alignment
    except (_Bad, struct.error):
        return None
    if data > size or any(o > size - data for o in offsets):
        return None
    return spaced((data + o for o in offsets), size, keep=(0, data))


_EOCD, _EOCD64, _LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_CENTRAL, _LOCAL = b"PK\x01\x02", b"PK\x03\x04"


def zip_cuts(read: Read, size: int) -> list[int] | None:
    """Offsets where chunks must start in a zip archive: each entry's data,
    and the central directory; None if it is not one (or uses what we do
    not read: several disks, a directory before its entries)."""
    try:
        tail_at = max(0, size - (22 + 0xFFFF + 20))
        tail = read(tail_at, size - tail_at)
        end = tail.rfind(_EOCD)
        if end < 0 or len(tail) < end + 22:
            return None
        _, disk, cd_disk, _, entries, cd_size, cd_at, _ = struct.unpack(
            "<4sHHHHIIH", tail[end : end + 22]
        )
        if disk or cd_disk:
            return None
        if 0xFFFF in (entries,) or 0xFFFFFFFF in (cd_size, cd_at):  # zip64
            if end < 20 or tail[end - 20 : end - 16] != _LOCATOR:
                return None
            (eocd64_at,) = struct.unpack("<Q", tail[end - 12 : end - 4])
            record = read(eocd64_at, 56)
            if len(record) < 56 or record[:4] != _EOCD64:
                return None
            entries, cd_size, cd_at = struct.unpack("<QQQ", record[32:56])
        if entries > MAX_ITEMS or cd_at + cd_size > size:
            return None
        s = _Stream(lambda at, n: read(cd_at + at, n), cd_size, cd_size)
        starts, large = [], []  # entries' data; of those, the ones a tensor fills
        for _ in range(entries):
            fixed = s.take(46)
            if fixed[:4] != _CENTRAL:
                return None
            name, extra, comment = struct.unpack("<HHH", fixed[28:34])
            (local,) = struct.unpack("<I", fixed[42:46])
            s.take(name)
            extras = s.take(extra)
            s.take(comment)
            if local == 0xFFFFFFFF:
                local = _zip64_offset(fixed, extras)
            header = read(local, 30)
            if len(header) < 30 or header[:4] != _LOCAL:
                return None
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            starts.append(local + 30 + name_len + extra_len)
            (stored,) = struct.unpack("<I", fixed[20:24])
            if stored >= MIN_SEGMENT:  # (0xFFFFFFFF: a zip64 size, larger still)
                large += [local, starts[-1]]  # its header alone: it changes with the entry
    except (_Bad, struct.error):
        return None
    if any(start > cd_at for start in starts):
        return None
    return spaced(starts, size, keep=(0, *large, cd_at))


def _zip64_offset(fixed: bytes, extras: bytes) -> int:
    """The local header offset from a central entry's zip64 extra field."""
    sizes = struct.unpack("<II", fixed[20:28])
    at = 0
    while at + 4 <= len(extras):
        tag, length = struct.unpack("<HH", extras[at : at + 4])
        body = extras[at + 4 : at + 4 + length]
        if tag == 0x0001:
            skip = 8 * sum(1 for v in (sizes[1], sizes[0]) if v == 0xFFFFFFFF)
            if len(body) < skip + 8:
                raise _Bad("short zip64 field")
            return int(struct.unpack("<Q", body[skip : skip + 8])[0])
        at += 4 + length
    raise _Bad("no zip64 offset")


def spaced(cuts: Iterable[int], size: int, keep: Iterable[int] = ()) -> list[int]:
    """``keep`` (the header's end, a trailing directory), and the other cuts
    each at least MIN_SEGMENT after the one before (runs of small tensors or
    entries share chunks), in order and within the file."""
    kept = set(keep)
    last = -MIN_SEGMENT
    for cut in sorted(set(cuts) | kept):
        if cut in kept or cut - last >= MIN_SEGMENT:
            kept.add(cut)
            last = cut
    return sorted(c for c in kept if 0 <= c < size)
