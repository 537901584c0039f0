"""The record layer: Noise transport messages on a byte stream.

Record = ``length (u16 BE) || AEAD ciphertext`` with ``length ≤ 65535`` (R-05);
the plaintext of one record is at most 65519 bytes. Nonces are the Noise
CipherState's counters, one per direction, so a dropped, replayed, reordered
or modified record fails authentication and poisons the decoder (R-06).
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from typing import Final

from p2pckpt.channel.noise import CipherState
from p2pckpt.errors import AuthenticationFailed, RemoteProtocolError

MAX_RECORD: Final = 65535
TAG_SIZE: Final = 16
MAX_PLAINTEXT: Final = MAX_RECORD - TAG_SIZE
_LEN = struct.Struct(">H")


class RecordEncoder:
    """Encrypts outgoing bytes into records."""

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher

    def encode(self, data: bytes | bytearray | memoryview) -> bytearray:
        view = memoryview(data)
        n = len(view)
        count = max(1, -(-n // MAX_PLAINTEXT))
        out = bytearray(n + count * (_LEN.size + TAG_SIZE))
        dst = memoryview(out)
        pos = 0
        for start in range(0, max(n, 1), MAX_PLAINTEXT):
            piece = view[start : start + MAX_PLAINTEXT]
            _LEN.pack_into(out, pos, len(piece) + TAG_SIZE)
            pos += _LEN.size
            pos += self._cipher.encrypt_into(b"", piece, dst[pos : pos + len(piece) + TAG_SIZE])
        return out


class RecordDecoder:
    """Reassembles and decrypts incoming records; fails closed."""

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher
        self._buf = bytearray()
        self._failed = False

    def feed(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Return the plaintext of every complete record now available."""
        if self._failed:
            raise RemoteProtocolError("channel already failed")
        self._buf += data
        buf = self._buf
        out = bytearray(len(buf))
        src = memoryview(buf)
        dst = memoryview(out)
        pos = 0
        written = 0
        try:
            while len(buf) - pos >= _LEN.size:
                (length,) = _LEN.unpack_from(buf, pos)
                if length < TAG_SIZE:
                    raise RemoteProtocolError("record shorter than its tag")
                end = pos + _LEN.size + length
                if end > len(buf):
                    break
                written += self._cipher.decrypt_into(
                    b"", src[pos + _LEN.size : end], dst[written : written + length - TAG_SIZE]
                )
                pos = end
        except (AuthenticationFailed, RemoteProtocolError):
            self._failed = True
            raise
        finally:
            src.release()
        del buf[:pos]
        return dst[:written]

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete record held (bounded by one record)."""
        return len(self._buf)
