"""Per-chunk compression codecs (issue 7): what a ``ChunkPacked`` body holds.

Pure (no I/O); ``zstandard`` is imported on first use, so nodes that never
pack a chunk never load it. Codecs, as numbered on the wire::

    1  zstd                       any bytes
    2  zstd over 2-byte grouping  bf16/fp16 tensors: every even byte, then every
                                  odd byte (exponents compress, mantissas do not)
    3  zstd over 4-byte grouping  fp32 tensors: byte 0 of every word, then byte 1, ...

Grouping covers the largest multiple of the width; the tail follows as is.
A puller offers the codecs it decodes as a bitmask (bit c = codec c).

Unpacking trusts nothing: the zstd frame must declare exactly the chunk's
length as its content size (checked before anything is allocated, so a
"decompression bomb" cannot make us allocate more than the manifest's
chunk length), must be one frame with no trailing bytes, and must produce
exactly that many bytes. Any failure is a ``RemoteProtocolError``; the
result is then hash-checked like any chunk.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK

RAW: Final = 0
ZSTD: Final = 1
ZSTD_BYTES2: Final = 2
ZSTD_BYTES4: Final = 3
CODECS: Final = (ZSTD, ZSTD_BYTES2, ZSTD_BYTES4)
NAMES: Final = {ZSTD: "zstd", ZSTD_BYTES2: "zstd+bytes2", ZSTD_BYTES4: "zstd+bytes4"}
WIDTH: Final = {ZSTD: 1, ZSTD_BYTES2: 2, ZSTD_BYTES4: 4}
LEVEL: Final = 1  # zstd level 1: ~0.5-1 GB/s per core, most of the ratio level 3 gets
MAX_WINDOW: Final = MAX_CHUNK  # a frame needing a bigger window is refused

_local = threading.local()  # zstd contexts are not thread-safe: one pair per thread
_zstd: Any = None
_available: int | None = None


def _lib() -> Any:
    global _zstd
    if _zstd is None:
        import zstandard

        _zstd = zstandard
    return _zstd


def available() -> int:
    """Bitmask of the codecs this node can pack and unpack (0 without zstandard)."""
    global _available
    if _available is None:
        try:
            _lib()
            _available = mask(CODECS)
        except ImportError:
            _available = 0
    return _available


def mask(codecs: tuple[int, ...] | list[int]) -> int:
    out = 0
    for codec in codecs:
        out |= 1 << codec
    return out


def group(data: bytes | bytearray, width: int) -> bytes:
    """Byte ``i`` of every ``width``-byte word, for i = 0..width-1, then the tail."""
    if width == 1:
        return bytes(data)
    whole = len(data) - len(data) % width
    return b"".join([data[i:whole:width] for i in range(width)] + [data[whole:]])


def ungroup(data: bytes | bytearray, width: int, out: bytearray) -> None:
    """Inverse of ``group``, into ``out`` (of exactly ``len(data)`` bytes)."""
    assert len(out) == len(data)
    if width == 1:
        out[:] = data
        return
    whole = len(data) - len(data) % width
    part = whole // width
    for i in range(width):
        out[i:whole:width] = data[i * part : (i + 1) * part]
    out[whole:] = data[whole:]


def _compressor() -> Any:
    comp = getattr(_local, "compressor", None)
    if comp is None:
        comp = _local.compressor = _lib().ZstdCompressor(
            level=LEVEL, write_content_size=True, write_checksum=False
        )
    return comp


def _decompressor() -> Any:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = _lib().ZstdDecompressor(max_window_size=MAX_WINDOW)
    return dec


def pack(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """``data`` packed with ``codec`` (which may well be longer than ``data``)."""
    width = WIDTH[codec]
    if width == 1:
        return _compressor().compress(data)  # type: ignore[no-any-return]
    src = data if isinstance(data, bytes | bytearray) else bytes(data)  # C-speed slicing
    return _compressor().compress(group(src, width))  # type: ignore[no-any-return]


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad packed chunk: {what}")


def unpack(codec: int, packed: bytes | bytearray, out: bytearray) -> None:
    """Unpack ``packed`` into ``out``, which has the chunk's length; anything
    but exactly that many bytes from one well-formed frame is refused."""
    width = WIDTH.get(codec)
    if width is None:
        raise _bad(f"unknown codec {codec}")
    length = len(out)
    if not 0 < len(packed) < length:
        raise _bad(f"{len(packed)} bytes packed for a chunk of {length}")
    zstd = _lib()
    try:
        declared = zstd.frame_content_size(packed)
    except zstd.ZstdError:
        raise _bad("no zstd frame header") from None
    if declared != length:  # also refuses frames that do not say their size
        raise _bad(f"frame declares {declared} bytes, the chunk has {length}")
    try:
        plain = _decompressor().decompress(
            packed, max_output_size=length, read_across_frames=False, allow_extra_data=False
        )
    except zstd.ZstdError as exc:
        raise _bad(f"zstd: {exc}") from None
    if len(plain) != length:  # pragma: no cover - the frame said its size
        raise _bad(f"{len(plain)} bytes unpacked, the chunk has {length}")
    ungroup(plain, width, out)
