"""Message framing and encoding inside the decrypted channel byte stream.

Frame: ``type (u8) || length (u32 BE) || body``. Bodies are msgpack arrays,
except ``ChunkData`` whose body is ``req_id (u32 BE) || raw bytes`` so a
chunk is never copied through msgpack, and ``ChunkPacked``:
``req_id (u32 BE) || codec (u8) || packed bytes``. Each type has its own size cap,
checked as soon as the 5-byte header is read and before any allocation, and
each side accepts only the types its role may receive. Any violation raises
``RemoteProtocolError`` and the reader is poisoned: the connection must end.
A type this release does not know at all (a newer peer's) is not a
violation: its body (at most UNKNOWN_CAP bytes) is skipped and it comes out
as ``Unknown``, which a server answers with an UNSUPPORTED error.

Bodies are decoded by ``bodies.py`` (a decoder per type); this module and
that one are the only ones that touch msgpack for wire messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK
from p2pckpt.manifest.manifest import MAX_MANIFEST_BYTES
from p2pckpt.wire.bodies import (
    T_CANCEL,
    T_CHUNK,
    T_CHUNK_REQ,
    T_ERROR,
    T_GATHER_CHALLENGE,
    T_GATHER_OFFER,
    T_GATHER_PROOF,
    T_GATHER_RESULT,
    T_HAVE,
    T_HAVE_REQ,
    T_HELLO,
    T_LIST_REQ,
    T_LIST_RESP,
    T_MAN_REQ,
    T_MAN_RESP,
    T_PACKED,
    T_PIECES,
    T_PIECES_REQ,
    T_PROGRESS_REQ,
    T_PUSH_PROGRESS,
    T_PUSH_REQ,
    T_PUSH_RESULT,
    T_RANGE_REQ,
    decode_body,
)
from p2pckpt.wire.messages import (
    MAX_HAVE_BYTES,
    MAX_PIECES,
    MAX_PUSH_PEERS,
    Cancel,
    ChunkData,
    ChunkPacked,
    ChunkRequest,
    Error,
    GatherChallenge,
    GatherOffer,
    GatherProof,
    GatherResult,
    Have,
    HaveRequest,
    Hello,
    ListRequest,
    ListResponse,
    ManifestRequest,
    ManifestResponse,
    Message,
    PieceList,
    PiecesRequest,
    ProgressRequest,
    PushProgress,
    PushRequest,
    PushResult,
    RangeRequest,
    Unknown,
)
from p2pckpt.wire.packing import CODECS

_HEADER = struct.Struct(">BI")
HEADER_SIZE: Final = _HEADER.size
_REQ_ID = struct.Struct(">I")
CHUNK_HEADER_SIZE: Final = HEADER_SIZE + _REQ_ID.size
PACKED_HEADER_SIZE: Final = CHUNK_HEADER_SIZE + 1  # ... and the codec byte

_CONTROL_CAP = 4096
_CAPS: Final = {
    T_LIST_REQ: _CONTROL_CAP,
    T_LIST_RESP: 4 << 20,  # MAX_LIST_ENTRIES entries with their listed meta
    T_MAN_REQ: _CONTROL_CAP,
    T_MAN_RESP: MAX_MANIFEST_BYTES + 64,
    T_CHUNK_REQ: _CONTROL_CAP,
    T_CHUNK: _REQ_ID.size + MAX_CHUNK,
    T_ERROR: _CONTROL_CAP,
    T_PUSH_REQ: _CONTROL_CAP + MAX_PUSH_PEERS * 300,  # 32-byte key, host <= 255, port
    T_PUSH_RESULT: _CONTROL_CAP,
    T_PUSH_PROGRESS: _CONTROL_CAP,
    T_HAVE_REQ: _CONTROL_CAP,
    T_HAVE: 2 * MAX_HAVE_BYTES + 64,
    T_CANCEL: _CONTROL_CAP,
    T_PACKED: _REQ_ID.size + MAX_CHUNK,  # never above a raw chunk's cap
    T_PIECES_REQ: _CONTROL_CAP,
    T_PIECES: 64 + MAX_PIECES * 32,  # [start, length, 16-byte digest]: under 30 bytes each
    T_RANGE_REQ: 64 + MAX_PIECES * 20,
    T_HELLO: _CONTROL_CAP,
    T_PROGRESS_REQ: _CONTROL_CAP,
    T_GATHER_OFFER: MAX_MANIFEST_BYTES + _CONTROL_CAP,  # entries: at most a manifest's
    T_GATHER_CHALLENGE: _CONTROL_CAP,
    T_GATHER_PROOF: MAX_CHUNK + 64,  # one chunk
    T_GATHER_RESULT: MAX_MANIFEST_BYTES + _CONTROL_CAP,
}
UNKNOWN_CAP: Final = 64 << 10  # body of a type we do not know (a newer peer's), skipped

SERVER_ACCEPTS: Final = frozenset(
    {
        T_LIST_REQ,
        T_MAN_REQ,
        T_CHUNK_REQ,
        T_PUSH_REQ,
        T_HAVE_REQ,
        T_CANCEL,
        T_PIECES_REQ,
        T_RANGE_REQ,
        T_HELLO,
        T_PROGRESS_REQ,
    }
)
CLIENT_ACCEPTS: Final = frozenset(
    {
        T_LIST_RESP,
        T_MAN_RESP,
        T_CHUNK,
        T_PACKED,
        T_ERROR,
        T_PUSH_PROGRESS,
        T_PUSH_RESULT,
        T_HAVE,
        T_PIECES,
        T_HELLO,
        T_GATHER_CHALLENGE,
        T_GATHER_RESULT,
    }
)
# What a coordinator gathering a multi-host version accepts (its own listener).
GATHER_ACCEPTS: Final = frozenset({T_HELLO, T_GATHER_OFFER, T_GATHER_PROOF})


def _pack(kind: int, body: list[Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return _HEADER.pack(kind, len(data)) + data


def encode(msg: Message) -> bytes:
    """Encode any message; ``ChunkData`` is better sent via ``chunk_header``."""
    match msg:
        case ListRequest():
            return _pack(T_LIST_REQ, [])
        case ListResponse(versions):
            return _pack(
                T_LIST_RESP,
                [
                    [
                        v.name,
                        v.version,
                        v.publisher,
                        v.root,
                        v.total_bytes,
                        v.file_count,
                        [list(kv) for kv in v.meta],
                    ]
                    for v in versions
                ],
            )
        case ManifestRequest(name, version):
            return _pack(T_MAN_REQ, [name, version])
        case ProgressRequest(name, None):
            return _pack(T_PROGRESS_REQ, [name])  # the form every "in-progress" server reads
        case ProgressRequest(name, after):
            return _pack(T_PROGRESS_REQ, [name, after])
        case GatherOffer(name, version, entries):
            return _pack(T_GATHER_OFFER, [name, version, entries])
        case GatherChallenge(seed, label):
            return _pack(T_GATHER_CHALLENGE, [seed, label])
        case GatherProof(index, data):
            return _pack(T_GATHER_PROOF, [index, data])
        case GatherResult(ok, message, envelope):
            return _pack(T_GATHER_RESULT, [ok, message, envelope])
        case ManifestResponse(envelope):
            return _pack(T_MAN_RESP, [envelope])
        case ChunkRequest(req_id, root, index, accept):
            # Without codecs, the 3-field form every seeder understands.
            body = [req_id, root, index, accept] if accept else [req_id, root, index]
            return _pack(T_CHUNK_REQ, body)
        case ChunkData(req_id, data):
            return chunk_header(req_id, len(data)) + bytes(data)
        case ChunkPacked(req_id, codec, data):
            return packed_header(req_id, codec, len(data)) + bytes(data)
        case PushRequest(name, version, root, port, peers):
            return _pack(T_PUSH_REQ, [name, version, root, port, [list(p) for p in peers]])
        case HaveRequest(root):
            return _pack(T_HAVE_REQ, [root])
        case Have(root, complete, bits, fetching, fixed):
            # ``fixed`` only when set: it goes only to peers that named multi-host
            tail = [fixed] if fixed else []
            return _pack(T_HAVE, [root, complete, bits, fetching, *tail])
        case Cancel(req_id):
            return _pack(T_CANCEL, [req_id])
        case PiecesRequest(req_id, root, index):
            return _pack(T_PIECES_REQ, [req_id, root, index])
        case PieceList(req_id, pieces):
            return _pack(T_PIECES, [req_id, [list(p) for p in pieces]])
        case RangeRequest(req_id, root, index, ranges):
            return _pack(T_RANGE_REQ, [req_id, root, index, [list(r) for r in ranges]])
        case PushProgress(done, total):
            return _pack(T_PUSH_PROGRESS, [done, total])
        case PushResult(ok, message, total):
            return _pack(T_PUSH_RESULT, [ok, message[:1000], total])
        case Error(code, message, req_id):
            return _pack(T_ERROR, [code, message, req_id])
        case Hello(protocol, release, features):
            return _pack(T_HELLO, [protocol, release, sorted(features)])
    raise TypeError(f"not a message: {msg!r}")


def chunk_header(req_id: int, length: int) -> bytes:
    """The 9 bytes that precede ``length`` raw chunk bytes."""
    return _HEADER.pack(T_CHUNK, _REQ_ID.size + length) + _REQ_ID.pack(req_id)


def packed_header(req_id: int, codec: int, length: int) -> bytes:
    """The 10 bytes that precede ``length`` packed chunk bytes."""
    return (
        _HEADER.pack(T_PACKED, _REQ_ID.size + 1 + length) + _REQ_ID.pack(req_id) + bytes((codec,))
    )


class MessageReader:
    """Pure incremental parser: ``feed`` plaintext, get whole messages.

    A chunk body is copied once, into a buffer of exactly its declared size
    (declared sizes are capped before allocating).
    """

    def __init__(
        self, accepts: frozenset[int], alloc: Callable[[int], bytearray] = bytearray
    ) -> None:
        self._accepts = accepts
        self._alloc = alloc  # chunk bodies come from here (e.g. a buffer pool)
        self._buf = bytearray()
        self._need = HEADER_SIZE
        self._kind = 0
        self._req_id = 0
        self._codec = 0
        self._chunk_len = 0
        self._body: bytearray | None = None
        self._filled = 0
        self._failed = False
        self._ready: list[Message] = []

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Parse ``data``; returns every message completed so far."""
        self.absorb(data)
        return self.drain()

    def absorb(self, data: bytes | bytearray | memoryview) -> None:
        """Parse ``data``, keeping completed messages for ``drain``."""
        if self._failed:
            raise RemoteProtocolError("connection already failed")
        try:
            self._ready.extend(self._feed(memoryview(data)))
        except RemoteProtocolError:
            self._failed = True
            raise

    # The zero-copy path used by RecordDecoder.commit_to (a PlaintextSink).

    def direct(self, size: int) -> memoryview | None:
        """Space for exactly ``size`` more body bytes, if a chunk body is being
        filled and has that much room; the decoder decrypts into it."""
        body = self._body
        if body is None or self._failed or len(body) - self._filled < size:
            return None
        return memoryview(body)[self._filled : self._filled + size]

    def advanced(self, size: int) -> None:
        """``size`` bytes were written into the space ``direct`` gave."""
        assert self._body is not None
        self._filled += size
        if self._filled == len(self._body):
            body, self._body = self._body, None
            try:
                self._ready.append(self._complete(body))
            except RemoteProtocolError:
                self._failed = True  # poisoned, as by absorb
                raise

    def drain(self) -> list[Message]:
        """Messages completed through ``direct``/``advanced`` or ``feed``."""
        ready, self._ready = self._ready, []
        return ready

    def _complete(self, body: bytearray) -> Message:
        if self._kind not in _CAPS:
            return Unknown(self._kind)
        if self._kind == T_CHUNK:
            return ChunkData(self._req_id, body)
        if self._kind == T_PACKED:
            return ChunkPacked(self._req_id, self._codec, body)
        return decode_body(self._kind, bytes(body))

    def _feed(self, view: memoryview) -> list[Message]:
        out: list[Message] = []
        pos = 0
        n = len(view)
        while pos < n:
            if self._body is None:
                take = min(self._need - len(self._buf), n - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._need:
                    break
                if self._need == HEADER_SIZE:
                    kind, length = _HEADER.unpack(self._buf)
                    if kind not in _CAPS and length <= UNKNOWN_CAP:
                        self._kind = kind  # a newer peer's type: read past it, then say so
                        self._body = bytearray(length)
                        self._buf.clear()
                        self._filled = 0
                        if not length:
                            self._body = None
                            out.append(Unknown(kind))
                        continue
                    if kind not in self._accepts:
                        raise RemoteProtocolError(f"unexpected message type {kind}")
                    if length > _CAPS[kind]:
                        raise RemoteProtocolError(f"message of type {kind} too large ({length} B)")
                    if (kind == T_CHUNK and length < _REQ_ID.size + 1) or (
                        kind == T_PACKED and length < _REQ_ID.size + 2
                    ):
                        raise RemoteProtocolError(f"message of type {kind} too short ({length} B)")
                    self._kind = kind
                    if kind == T_CHUNK:  # read the request id, then the raw bytes
                        self._chunk_len = length - _REQ_ID.size
                        self._need = CHUNK_HEADER_SIZE
                        continue
                    if kind == T_PACKED:  # the request id and codec, then the packed bytes
                        self._chunk_len = length - _REQ_ID.size - 1
                        self._need = PACKED_HEADER_SIZE
                        continue
                    self._body = bytearray(length)
                else:
                    (self._req_id,) = _REQ_ID.unpack_from(self._buf, HEADER_SIZE)
                    self._need = HEADER_SIZE
                    if self._kind == T_PACKED:
                        self._codec = self._buf[CHUNK_HEADER_SIZE]
                        if self._codec not in CODECS:
                            raise RemoteProtocolError(f"unknown chunk codec {self._codec}")
                        self._body = bytearray(self._chunk_len)  # odd sizes: not pooled
                    else:
                        self._body = self._alloc(self._chunk_len)
                self._buf.clear()
                self._filled = 0
            body = self._body
            take = min(len(body) - self._filled, n - pos)
            body[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(body):
                self._body = None
                out.append(self._complete(body))
        return out
