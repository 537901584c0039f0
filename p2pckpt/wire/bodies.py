"""Decoding the msgpack bodies of wire messages: one small decoder per type.

``codec.py`` frames messages and hands each complete non-chunk body here;
``decode_body`` looks its decoder up in ``DECODERS`` (type -> decoder). Every
decoder checks the shape and ranges of its array and raises
``RemoteProtocolError`` on anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgpack

from p2pckpt.errors import LocalProtocolError, RemoteProtocolError
from p2pckpt.manifest.manifest import MAX_VERSION
from p2pckpt.wire.messages import (
    LIST_META_KEYS,
    MAX_HAVE_BYTES,
    MAX_LIST_ENTRIES,
    MAX_PIECES,
    MAX_PUSH_PEERS,
    Cancel,
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
    VersionInfo,
)

# Message types (the frame's first byte).
T_LIST_REQ, T_LIST_RESP, T_MAN_REQ, T_MAN_RESP, T_CHUNK_REQ, T_CHUNK, T_ERROR = range(1, 8)
T_PUSH_REQ, T_PUSH_RESULT, T_PUSH_PROGRESS = 8, 9, 10
T_HAVE_REQ, T_HAVE, T_CANCEL = 11, 12, 13
T_PACKED = 14
T_PIECES_REQ, T_PIECES, T_RANGE_REQ = 15, 16, 17
T_HELLO = 18
T_PROGRESS_REQ = 19
# multi-host publish (feature "gather", only with a coordinator: issue 21 item 2)
T_GATHER_OFFER, T_GATHER_CHALLENGE, T_GATHER_PROOF, T_GATHER_RESULT = 20, 21, 22, 23

_U32: Final = (1 << 32) - 1


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed message: {what}")


def _is_int(v: object, hi: int) -> bool:
    return type(v) is int and 0 <= v <= hi


def _is_name(v: object) -> bool:
    return isinstance(v, str) and len(v) <= 128


def _is_key(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _list_request(doc: list[Any]) -> Message:
    if doc:
        raise _bad("list request")
    return ListRequest()


def _version_info(v: object) -> VersionInfo:
    if not (
        isinstance(v, list)
        and len(v) in (6, 7)
        and _is_name(v[0])
        and _is_int(v[1], MAX_VERSION)
        and _is_key(v[2])
        and _is_key(v[3])
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
        return VersionInfo(v[0], v[1], v[2], v[3], v[4], v[5], pairs)
    except LocalProtocolError as exc:
        raise _bad(str(exc)) from None


def _list_response(doc: list[Any]) -> Message:
    return ListResponse(tuple(_version_info(v) for v in doc))


def _manifest_request(doc: list[Any]) -> Message:
    if (
        len(doc) != 2
        or not _is_name(doc[0])
        or not (doc[1] is None or _is_int(doc[1], MAX_VERSION))
    ):
        raise _bad("manifest request")
    return ManifestRequest(doc[0], doc[1])


MAX_SEQUENCE: Final = 10**16 - 1  # an in-progress sequence has at most 16 digits


def _progress_request(doc: list[Any]) -> Message:
    if (
        len(doc) not in (1, 2)
        or not _is_name(doc[0])
        or (len(doc) == 2 and not _is_int(doc[1], MAX_SEQUENCE))
    ):
        raise _bad("progress request")
    return ProgressRequest(doc[0], doc[1] if len(doc) == 2 else None)


def _manifest_response(doc: list[Any]) -> Message:
    if len(doc) != 1 or not isinstance(doc[0], bytes):
        raise _bad("manifest response")
    return ManifestResponse(doc[0])


def _chunk_request(doc: list[Any]) -> Message:
    if (
        len(doc) not in (3, 4)  # the accepted codecs came later (issue 7)
        or not _is_int(doc[0], _U32)
        or not _is_key(doc[1])
        or not _is_int(doc[2], 1 << 32)
        or not (len(doc) == 3 or _is_int(doc[3], _U32))
    ):
        raise _bad("chunk request")
    return ChunkRequest(doc[0], doc[1], doc[2], doc[3] if len(doc) == 4 else 0)


def _is_push_peer(p: object) -> bool:
    return (
        isinstance(p, list)
        and len(p) == 3
        and _is_key(p[0])
        and isinstance(p[1], str)
        and 0 < len(p[1]) <= 255
        and p[1].isascii()  # a host name or IP literal; IDNA is not for peers
        and _is_int(p[2], 65535)
        and p[2] != 0
    )


def _push_request(doc: list[Any]) -> Message:
    if (
        len(doc) not in (4, 5)  # the peer list came later (issue 5)
        or not _is_name(doc[0])
        or not _is_int(doc[1], MAX_VERSION)
        or not _is_key(doc[2])
        or not _is_int(doc[3], 65535)
        or doc[3] == 0
    ):
        raise _bad("push request")
    peers = doc[4] if len(doc) == 5 else []
    if not isinstance(peers, list) or len(peers) > MAX_PUSH_PEERS:
        raise _bad("push request peers")
    if not all(_is_push_peer(p) for p in peers):
        raise _bad("push request peer")
    return PushRequest(doc[0], doc[1], doc[2], doc[3], tuple((k, h, pt) for k, h, pt in peers))


def _push_result(doc: list[Any]) -> Message:
    if (
        len(doc) != 3
        or type(doc[0]) is not bool
        or not isinstance(doc[1], str)
        or not _is_int(doc[2], 1 << 62)
    ):
        raise _bad("push result")
    return PushResult(doc[0], doc[1][:1000], doc[2])


def _have_request(doc: list[Any]) -> Message:
    if len(doc) != 1 or not _is_key(doc[0]):
        raise _bad("have request")
    return HaveRequest(doc[0])


def _have(doc: list[Any]) -> Message:
    if (
        len(doc) not in (3, 4, 5)  # fetching came later in issue 5, fixed in issue 21
        or not _is_key(doc[0])
        or type(doc[1]) is not bool
        or not all(isinstance(b, bytes) and len(b) <= MAX_HAVE_BYTES for b in doc[2:4])
        or (len(doc) == 5 and type(doc[4]) is not bool)
    ):
        raise _bad("have")
    return Have(doc[0], doc[1], doc[2], doc[3] if len(doc) >= 4 else b"", len(doc) == 5 and doc[4])


def _cancel(doc: list[Any]) -> Message:
    if len(doc) != 1 or not _is_int(doc[0], _U32):
        raise _bad("cancel")
    return Cancel(doc[0])


def _pieces_request(doc: list[Any]) -> Message:
    if len(doc) != 3 or not _is_int(doc[0], _U32) or not _is_key(doc[1]) or type(doc[2]) is not int:
        raise _bad("pieces request")
    return _built("pieces request", PiecesRequest, doc[0], doc[1], doc[2])


def _piece_list(doc: list[Any]) -> Message:
    if (
        len(doc) != 2
        or not _is_int(doc[0], _U32)
        or not isinstance(doc[1], list)
        or len(doc[1]) > MAX_PIECES
        or not all(
            isinstance(p, list)
            and len(p) == 3
            and type(p[0]) is int
            and type(p[1]) is int
            and isinstance(p[2], bytes)
            for p in doc[1]
        )
    ):
        raise _bad("piece list")
    return _built("piece list", PieceList, doc[0], tuple(tuple(p) for p in doc[1]))


def _range_request(doc: list[Any]) -> Message:
    if (
        len(doc) != 4
        or not _is_int(doc[0], _U32)
        or not _is_key(doc[1])
        or type(doc[2]) is not int
        or not isinstance(doc[3], list)
        or len(doc[3]) > MAX_PIECES
        or not all(
            isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r) for r in doc[3]
        )
    ):
        raise _bad("range request")
    return _built("range request", RangeRequest, doc[0], doc[1], doc[2], tuple(map(tuple, doc[3])))


def _built(what: str, kind: Callable[..., Message], *args: Any) -> Message:
    """The message, its constructor's range checks failing as a malformed message."""
    try:
        return kind(*args)
    except LocalProtocolError as exc:
        raise _bad(f"{what}: {exc}") from None


def _push_progress(doc: list[Any]) -> Message:
    if len(doc) != 2 or not _is_int(doc[0], 1 << 62) or not _is_int(doc[1], 1 << 62):
        raise _bad("push progress")
    return PushProgress(doc[0], doc[1])


def _error(doc: list[Any]) -> Message:
    if (
        len(doc) != 3
        or not isinstance(doc[0], str)
        or not isinstance(doc[1], str)
        or not (doc[2] is None or _is_int(doc[2], _U32))
    ):
        raise _bad("error")
    return Error(doc[0], doc[1], doc[2])


def _hello(doc: list[Any]) -> Message:
    """[protocol, release, [feature, ...], ...]: fields after these three are
    a later release's, ignored (a Hello must always be understood)."""
    if (
        len(doc) < 3
        or not _is_int(doc[0], (1 << 16) - 1)
        or not isinstance(doc[1], str)
        or not isinstance(doc[2], list)
        or not all(isinstance(f, str) for f in doc[2])
    ):
        raise _bad("hello")
    return _built("hello", Hello, doc[0], doc[1], frozenset(doc[2]))


def _gather_offer(doc: list[Any]) -> Message:
    if (
        len(doc) != 3
        or not _is_name(doc[0])
        or not _is_int(doc[1], MAX_VERSION)
        or not isinstance(doc[2], bytes)
    ):
        raise _bad("gather offer")
    return GatherOffer(doc[0], doc[1], doc[2])


def _gather_challenge(doc: list[Any]) -> Message:
    if (
        len(doc) != 2
        or not isinstance(doc[0], bytes)
        or len(doc[0]) != 32
        or not isinstance(doc[1], str)
        or not 0 < len(doc[1]) <= 128
    ):
        raise _bad("gather challenge")
    return GatherChallenge(doc[0], doc[1])


def _gather_proof(doc: list[Any]) -> Message:
    if len(doc) != 2 or not _is_int(doc[0], _U32) or not isinstance(doc[1], bytes):
        raise _bad("gather proof")
    return GatherProof(doc[0], doc[1])


def _gather_result(doc: list[Any]) -> Message:
    if (
        len(doc) != 3
        or type(doc[0]) is not bool
        or not isinstance(doc[1], str)
        or not isinstance(doc[2], bytes)
    ):
        raise _bad("gather result")
    return GatherResult(doc[0], doc[1][:1000], doc[2])


DECODERS: Final[dict[int, Callable[[list[Any]], Message]]] = {
    T_LIST_REQ: _list_request,
    T_LIST_RESP: _list_response,
    T_MAN_REQ: _manifest_request,
    T_MAN_RESP: _manifest_response,
    T_CHUNK_REQ: _chunk_request,
    T_PUSH_REQ: _push_request,
    T_PUSH_RESULT: _push_result,
    T_HAVE_REQ: _have_request,
    T_HAVE: _have,
    T_CANCEL: _cancel,
    T_PUSH_PROGRESS: _push_progress,
    T_ERROR: _error,
    T_PIECES_REQ: _pieces_request,
    T_PIECES: _piece_list,
    T_RANGE_REQ: _range_request,
    T_HELLO: _hello,
    T_PROGRESS_REQ: _progress_request,
    T_GATHER_OFFER: _gather_offer,
    T_GATHER_CHALLENGE: _gather_challenge,
    T_GATHER_PROOF: _gather_proof,
    T_GATHER_RESULT: _gather_result,
}


def decode_body(kind: int, body: bytes) -> Message:
    """The message of type ``kind`` whose msgpack body is ``body``."""
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
    decoder = DECODERS.get(kind)
    if decoder is None:  # pragma: no cover - filtered by the reader's accepts
        raise _bad(f"type {kind}")
    return decoder(doc)
