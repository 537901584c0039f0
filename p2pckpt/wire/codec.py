"""Message framing and encoding inside the decrypted channel byte stream.

Frame: ``type (u8) || length (u32 BE) || body``. Bodies are msgpack arrays,
except ``ChunkData`` whose body is ``req_id (u32 BE) || raw bytes`` so a
chunk is never copied through msgpack, and ``ChunkPacked``:
``req_id (u32 BE) || codec (u8) || packed bytes``. Each type has its own size cap,
checked as soon as the 5-byte header is read and before any allocation, and
each side accepts only the types its role may receive. Any violation raises
``RemoteProtocolError`` and the reader is poisoned: the connection must end.

This is the only module that touches msgpack for wire messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

from p2pckpt.errors import LocalProtocolError, RemoteProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK
from p2pckpt.manifest.manifest import MAX_MANIFEST_BYTES, MAX_VERSION
from p2pckpt.wire.messages import (
    LIST_META_KEYS,
    MAX_HAVE_BYTES,
    MAX_LIST_ENTRIES,
    MAX_PUSH_PEERS,
    Cancel,
    ChunkData,
    ChunkPacked,
    ChunkRequest,
    Error,
    Have,
    HaveRequest,
    ListRequest,
    ListResponse,
    ManifestRequest,
    ManifestResponse,
    Message,
    PushProgress,
    PushRequest,
    PushResult,
    VersionInfo,
)
from p2pckpt.wire.packing import CODECS

_HEADER = struct.Struct(">BI")
HEADER_SIZE: Final = _HEADER.size
_REQ_ID = struct.Struct(">I")
CHUNK_HEADER_SIZE: Final = HEADER_SIZE + _REQ_ID.size
PACKED_HEADER_SIZE: Final = CHUNK_HEADER_SIZE + 1  # ... and the codec byte

_T_LIST_REQ, _T_LIST_RESP, _T_MAN_REQ, _T_MAN_RESP, _T_CHUNK_REQ, _T_CHUNK, _T_ERROR = range(1, 8)
_T_PUSH_REQ, _T_PUSH_RESULT, _T_PUSH_PROGRESS = 8, 9, 10
_T_HAVE_REQ, _T_HAVE, _T_CANCEL = 11, 12, 13
_T_PACKED = 14

_CONTROL_CAP = 4096
_CAPS: Final = {
    _T_LIST_REQ: _CONTROL_CAP,
    _T_LIST_RESP: 4 << 20,  # 4096 entries with their listed meta
    _T_MAN_REQ: _CONTROL_CAP,
    _T_MAN_RESP: MAX_MANIFEST_BYTES + 64,
    _T_CHUNK_REQ: _CONTROL_CAP,
    _T_CHUNK: _REQ_ID.size + MAX_CHUNK,
    _T_ERROR: _CONTROL_CAP,
    _T_PUSH_REQ: _CONTROL_CAP + MAX_PUSH_PEERS * 300,  # 32-byte key, host <= 255, port
    _T_PUSH_RESULT: _CONTROL_CAP,
    _T_PUSH_PROGRESS: _CONTROL_CAP,
    _T_HAVE_REQ: _CONTROL_CAP,
    _T_HAVE: 2 * MAX_HAVE_BYTES + 64,
    _T_CANCEL: _CONTROL_CAP,
    _T_PACKED: _REQ_ID.size + MAX_CHUNK,  # never above a raw chunk's cap
}
SERVER_ACCEPTS: Final = frozenset(
    {_T_LIST_REQ, _T_MAN_REQ, _T_CHUNK_REQ, _T_PUSH_REQ, _T_HAVE_REQ, _T_CANCEL}
)
CLIENT_ACCEPTS: Final = frozenset(
    {
        _T_LIST_RESP,
        _T_MAN_RESP,
        _T_CHUNK,
        _T_PACKED,
        _T_ERROR,
        _T_PUSH_PROGRESS,
        _T_PUSH_RESULT,
        _T_HAVE,
    }
)


def _pack(kind: int, body: list[Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return _HEADER.pack(kind, len(data)) + data


def encode(msg: Message) -> bytes:
    """Encode any message; ``ChunkData`` is better sent via ``chunk_header``."""
    match msg:
        case ListRequest():
            return _pack(_T_LIST_REQ, [])
        case ListResponse(versions):
            return _pack(
                _T_LIST_RESP,
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
            return _pack(_T_MAN_REQ, [name, version])
        case ManifestResponse(envelope):
            return _pack(_T_MAN_RESP, [envelope])
        case ChunkRequest(req_id, root, index, accept):
            # Without codecs, the 3-field form every seeder understands.
            body = [req_id, root, index, accept] if accept else [req_id, root, index]
            return _pack(_T_CHUNK_REQ, body)
        case ChunkData(req_id, data):
            return chunk_header(req_id, len(data)) + bytes(data)
        case ChunkPacked(req_id, codec, data):
            return packed_header(req_id, codec, len(data)) + bytes(data)
        case PushRequest(name, version, root, port, peers):
            return _pack(_T_PUSH_REQ, [name, version, root, port, [list(p) for p in peers]])
        case HaveRequest(root):
            return _pack(_T_HAVE_REQ, [root])
        case Have(root, complete, bits, fetching):
            return _pack(_T_HAVE, [root, complete, bits, fetching])
        case Cancel(req_id):
            return _pack(_T_CANCEL, [req_id])
        case PushProgress(done, total):
            return _pack(_T_PUSH_PROGRESS, [done, total])
        case PushResult(ok, message, total):
            return _pack(_T_PUSH_RESULT, [ok, message[:1000], total])
        case Error(code, message, req_id):
            return _pack(_T_ERROR, [code, message, req_id])
    raise TypeError(f"not a message: {msg!r}")


def chunk_header(req_id: int, length: int) -> bytes:
    """The 9 bytes that precede ``length`` raw chunk bytes."""
    return _HEADER.pack(_T_CHUNK, _REQ_ID.size + length) + _REQ_ID.pack(req_id)


def packed_header(req_id: int, codec: int, length: int) -> bytes:
    """The 10 bytes that precede ``length`` packed chunk bytes."""
    return (
        _HEADER.pack(_T_PACKED, _REQ_ID.size + 1 + length) + _REQ_ID.pack(req_id) + bytes((codec,))
    )


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed message: {what}")


def _is_int(v: object, hi: int) -> bool:
    return type(v) is int and 0 <= v <= hi


def _decode(kind: int, body: bytes) -> Message:
    try:
        doc = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=MAX_LIST_ENTRIES,
        )
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise _bad("not msgpack") from exc
    if not isinstance(doc, list):
        raise _bad("not an array")
    if kind == _T_LIST_REQ:
        if doc:
            raise _bad("list request")
        return ListRequest()
    if kind == _T_LIST_RESP:
        versions = []
        for v in doc:
            if not (
                isinstance(v, list)
                and len(v) in (6, 7)
                and isinstance(v[0], str)
                and len(v[0]) <= 128
                and _is_int(v[1], MAX_VERSION)
                and isinstance(v[2], bytes)
                and len(v[2]) == 32
                and isinstance(v[3], bytes)
                and len(v[3]) == 32
                and _is_int(v[4], 1 << 62)
                and _is_int(v[5], 1 << 32)
            ):
                raise _bad("list entry")
            meta = v[6] if len(v) == 7 else []
            if not (
                isinstance(meta, list)
                and len(meta) <= len(LIST_META_KEYS)
                and all(
                    isinstance(kv, list)
                    and len(kv) == 2
                    and isinstance(kv[0], str)
                    and isinstance(kv[1], str)
                    for kv in meta
                )
            ):
                raise _bad("list meta")
            try:
                pairs = tuple((k, val) for k, val in meta)
                versions.append(VersionInfo(v[0], v[1], v[2], v[3], v[4], v[5], pairs))
            except LocalProtocolError as exc:
                raise _bad(str(exc)) from None
        return ListResponse(tuple(versions))
    if kind == _T_MAN_REQ:
        if (
            len(doc) != 2
            or not isinstance(doc[0], str)
            or len(doc[0]) > 128
            or not (doc[1] is None or _is_int(doc[1], MAX_VERSION))
        ):
            raise _bad("manifest request")
        return ManifestRequest(doc[0], doc[1])
    if kind == _T_MAN_RESP:
        if len(doc) != 1 or not isinstance(doc[0], bytes):
            raise _bad("manifest response")
        return ManifestResponse(doc[0])
    if kind == _T_CHUNK_REQ:
        if (
            len(doc) not in (3, 4)  # the accepted codecs came later (issue 7)
            or not _is_int(doc[0], (1 << 32) - 1)
            or not isinstance(doc[1], bytes)
            or len(doc[1]) != 32
            or not _is_int(doc[2], 1 << 32)
            or not (len(doc) == 3 or _is_int(doc[3], (1 << 32) - 1))
        ):
            raise _bad("chunk request")
        return ChunkRequest(doc[0], doc[1], doc[2], doc[3] if len(doc) == 4 else 0)
    if kind == _T_PUSH_REQ:
        if (
            len(doc) not in (4, 5)  # the peer list came later (issue 5)
            or not isinstance(doc[0], str)
            or len(doc[0]) > 128
            or not _is_int(doc[1], MAX_VERSION)
            or not isinstance(doc[2], bytes)
            or len(doc[2]) != 32
            or not _is_int(doc[3], 65535)
            or doc[3] == 0
        ):
            raise _bad("push request")
        peers = doc[4] if len(doc) == 5 else []
        if not isinstance(peers, list) or len(peers) > MAX_PUSH_PEERS:
            raise _bad("push request peers")
        for p in peers:
            if (
                not isinstance(p, list)
                or len(p) != 3
                or not isinstance(p[0], bytes)
                or len(p[0]) != 32
                or not isinstance(p[1], str)
                or not 0 < len(p[1]) <= 255
                or not p[1].isascii()  # a host name or IP literal; IDNA is not for peers
                or not _is_int(p[2], 65535)
                or p[2] == 0
            ):
                raise _bad("push request peer")
        return PushRequest(doc[0], doc[1], doc[2], doc[3], tuple((k, h, pt) for k, h, pt in peers))
    if kind == _T_PUSH_RESULT:
        if (
            len(doc) != 3
            or type(doc[0]) is not bool
            or not isinstance(doc[1], str)
            or not _is_int(doc[2], 1 << 62)
        ):
            raise _bad("push result")
        return PushResult(doc[0], doc[1][:1000], doc[2])
    if kind == _T_HAVE_REQ:
        if len(doc) != 1 or not isinstance(doc[0], bytes) or len(doc[0]) != 32:
            raise _bad("have request")
        return HaveRequest(doc[0])
    if kind == _T_HAVE:
        if (
            len(doc) not in (3, 4)  # fetching came later in issue 5
            or not isinstance(doc[0], bytes)
            or len(doc[0]) != 32
            or type(doc[1]) is not bool
            or not all(isinstance(b, bytes) and len(b) <= MAX_HAVE_BYTES for b in doc[2:])
        ):
            raise _bad("have")
        return Have(doc[0], doc[1], doc[2], doc[3] if len(doc) == 4 else b"")
    if kind == _T_CANCEL:
        if len(doc) != 1 or not _is_int(doc[0], (1 << 32) - 1):
            raise _bad("cancel")
        return Cancel(doc[0])
    if kind == _T_PUSH_PROGRESS:
        if len(doc) != 2 or not _is_int(doc[0], 1 << 62) or not _is_int(doc[1], 1 << 62):
            raise _bad("push progress")
        return PushProgress(doc[0], doc[1])
    if kind == _T_ERROR:
        if (
            len(doc) != 3
            or not isinstance(doc[0], str)
            or not isinstance(doc[1], str)
            or not (doc[2] is None or _is_int(doc[2], (1 << 32) - 1))
        ):
            raise _bad("error")
        return Error(doc[0], doc[1], doc[2])
    raise _bad(f"type {kind}")  # pragma: no cover - filtered by accepts


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
        if self._kind == _T_CHUNK:
            return ChunkData(self._req_id, body)
        if self._kind == _T_PACKED:
            return ChunkPacked(self._req_id, self._codec, body)
        return _decode(self._kind, bytes(body))

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
                    if kind not in self._accepts:
                        raise RemoteProtocolError(f"unexpected message type {kind}")
                    if length > _CAPS[kind]:
                        raise RemoteProtocolError(f"message of type {kind} too large ({length} B)")
                    if (kind == _T_CHUNK and length < _REQ_ID.size + 1) or (
                        kind == _T_PACKED and length < _REQ_ID.size + 2
                    ):
                        raise RemoteProtocolError(f"message of type {kind} too short ({length} B)")
                    self._kind = kind
                    if kind == _T_CHUNK:  # read the request id, then the raw bytes
                        self._chunk_len = length - _REQ_ID.size
                        self._need = CHUNK_HEADER_SIZE
                        continue
                    if kind == _T_PACKED:  # the request id and codec, then the packed bytes
                        self._chunk_len = length - _REQ_ID.size - 1
                        self._need = PACKED_HEADER_SIZE
                        continue
                    self._body = bytearray(length)
                else:
                    (self._req_id,) = _REQ_ID.unpack_from(self._buf, HEADER_SIZE)
                    self._need = HEADER_SIZE
                    if self._kind == _T_PACKED:
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
