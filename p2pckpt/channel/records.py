"""The record layer: Noise transport messages on a byte stream.

Record = ``length (u16 BE) || AEAD ciphertext`` with ``length ≤ 65535`` (R-05);
the plaintext of one record is at most 65519 bytes. Nonces are the Noise
CipherState's counters, one per direction, so a dropped, replayed, reordered
or modified record fails authentication and poisons the decoder (R-06).

Pure: bytes in, bytes out. Both directions work in fixed buffers that are
reused for the life of the connection, so the bulk path allocates nothing
per record and memory per connection is bounded by construction.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from p2pckpt.channel.cipher import CipherState
from p2pckpt.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError

MAX_RECORD: Final = 65535
TAG_SIZE: Final = 16
MAX_PLAINTEXT: Final = MAX_RECORD - TAG_SIZE
RECEIVE_WINDOW: Final = 1 << 20
_LEN = struct.Struct(">H")
_OVERHEAD: Final = _LEN.size + TAG_SIZE


def encoded_size(n: int) -> int:
    """Bytes on the wire for ``n`` bytes of plaintext."""
    return n + max(1, -(-n // MAX_PLAINTEXT)) * _OVERHEAD


class RecordEncoder:
    """Encrypts outgoing bytes into records, in a buffer it reuses."""

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher
        self._out = bytearray()

    def encode(self, data: bytes | bytearray | memoryview) -> memoryview:
        """The records for ``data``; the view is valid until the next call."""
        view = memoryview(data)
        n = len(view)
        size = encoded_size(n)
        if len(self._out) < size:
            self._out = bytearray(size)
        out = self._out
        dst = memoryview(out)
        pos = 0
        for start in range(0, max(n, 1), MAX_PLAINTEXT):
            piece = view[start : start + MAX_PLAINTEXT]
            _LEN.pack_into(out, pos, len(piece) + TAG_SIZE)
            pos += _LEN.size
            pos += self._cipher.encrypt_into(b"", piece, dst[pos : pos + len(piece) + TAG_SIZE])
        return dst[:pos]


class PlaintextSink(Protocol):
    """Where decrypted bytes go: ``direct`` offers space to decrypt into in
    place (or None), ``advanced`` accounts for it, ``absorb`` takes a copy."""

    def direct(self, size: int) -> memoryview | None: ...

    def advanced(self, size: int) -> None: ...

    def absorb(self, data: memoryview) -> None: ...


class _Scratch:
    """A sink that decrypts every record into one contiguous buffer."""

    def __init__(self, buf: bytearray) -> None:
        self.view = memoryview(buf)
        self.filled = 0

    def direct(self, size: int) -> memoryview:
        return self.view[self.filled : self.filled + size]

    def advanced(self, size: int) -> None:
        self.filled += size

    def absorb(self, data: memoryview) -> None:  # pragma: no cover - direct() never declines
        raise LocalProtocolError("scratch sink takes records in place")


class RecordDecoder:
    """Reassembles and decrypts incoming records; fails closed.

    Use ``window()`` + ``commit(n)`` to receive straight into the decoder's
    buffer (``recv_into``), or ``feed(data)`` for any bytes. The returned
    plaintext view is valid until the next call.
    """

    def __init__(self, cipher: CipherState, window: int = RECEIVE_WINDOW) -> None:
        self._cipher = cipher
        self._buf = bytearray(window + _LEN.size + MAX_RECORD)
        # Plaintext that is not decrypted in place: one record at a time for
        # ``commit_to``; ``commit`` grows it to the window on first use.
        self._out = bytearray(MAX_RECORD)
        self._start = 0
        self._end = 0
        self._failed = False

    def window(self) -> memoryview:
        """Free space to receive into (at least one whole record's worth)."""
        if self._failed:
            raise RemoteProtocolError("channel already failed")
        if self._start:
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end :]

    def commit_to(self, n: int, sink: PlaintextSink) -> None:
        """Like ``commit`` but hands each record's plaintext to ``sink``,
        decrypting straight into the sink's buffer when it offers space (the
        bulk path: no copy between decryption and the chunk buffer)."""
        if n < 0 or self._end + n > len(self._buf):
            raise LocalProtocolError("commit beyond the receive window")
        self._end += n
        buf, src = self._buf, memoryview(self._buf)
        scratch = memoryview(self._out)
        pos, end = self._start, self._end
        try:
            while end - pos >= _LEN.size:
                (length,) = _LEN.unpack_from(buf, pos)
                if length < TAG_SIZE:
                    raise RemoteProtocolError("record shorter than its tag")
                stop = pos + _LEN.size + length
                if stop > end:
                    break
                size = length - TAG_SIZE
                record = src[pos + _LEN.size : stop]
                target = sink.direct(size)
                if target is not None:
                    self._cipher.decrypt_into(b"", record, target)
                    sink.advanced(size)
                else:
                    self._cipher.decrypt_into(b"", record, scratch[:size])
                    sink.absorb(scratch[:size])
                pos = stop
        except (AuthenticationFailed, RemoteProtocolError):
            self._failed = True
            raise
        finally:
            self._start = pos

    def commit(self, n: int) -> memoryview:
        """Account for ``n`` bytes received into ``window()``; decrypt what is whole."""
        if len(self._out) < len(self._buf):
            self._out = bytearray(len(self._buf))
        sink = _Scratch(self._out)
        self.commit_to(n, sink)
        return sink.view[: sink.filled]

    def feed(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Decrypt every complete record in ``data`` plus what was buffered.

        The plaintext of one call may be large; callers that need bounded
        memory use ``window``/``commit`` instead.
        """
        view = memoryview(data)
        parts: list[bytes] = []
        while True:
            space = self.window()
            take = min(len(space), len(view))
            space[:take] = view[:take]
            view = view[take:]
            plain = self.commit(take)
            if not view:
                if not parts:
                    return plain
                parts.append(bytes(plain))
                return memoryview(b"".join(parts))
            parts.append(bytes(plain))

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete record held (bounded by one record)."""
        return self._end - self._start
