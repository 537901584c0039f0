"""Tests for p2pckpt.wire.codec: message framing, role filters, caps and fail-closed parsing."""

from __future__ import annotations

import random
import struct
from typing import Any, get_args

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK
from p2pckpt.manifest.manifest import MAX_MANIFEST_BYTES
from p2pckpt.wire.codec import (
    CHUNK_HEADER_SIZE,
    CLIENT_ACCEPTS,
    GATHER_ACCEPTS,
    HEADER_SIZE,
    SERVER_ACCEPTS,
    UNKNOWN_CAP,
    MessageReader,
    chunk_header,
    encode,
    packed_header,
)
from p2pckpt.wire.messages import (
    MAX_PUSH_PEERS,
    Cancel,
    ChunkData,
    ChunkPacked,
    ChunkRequest,
    Error,
    GatherChallenge,
    GatherMessage,
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
    Request,
    Unknown,
    VersionInfo,
)
from tests import strategies as s

PROPERTY = settings(max_examples=150, database=None, deadline=None)

ROOT = bytes(range(32))

# Type bytes, taken from the encoder rather than from private constants.
T_PIECES_REQ = encode(PiecesRequest(0, ROOT, 0))[0]
T_PIECES = encode(PieceList(0, ()))[0]
T_RANGE_REQ = encode(RangeRequest(0, ROOT, 0, ((0, 1),)))[0]
T_LIST_REQ = encode(ListRequest())[0]
T_LIST_RESP = encode(ListResponse(()))[0]
T_MAN_REQ = encode(ManifestRequest("x", None))[0]
T_PROGRESS_REQ = encode(ProgressRequest("x"))[0]
T_MAN_RESP = encode(ManifestResponse(b""))[0]
T_CHUNK_REQ = encode(ChunkRequest(0, ROOT, 0))[0]
T_CHUNK = chunk_header(0, 1)[0]
T_ERROR = encode(Error("c", "m"))[0]
T_PUSH_REQ = encode(PushRequest("x", 0, ROOT, 1))[0]
T_PUSH_RESULT = encode(PushResult(True, ""))[0]
T_PUSH_PROGRESS = encode(PushProgress(0, 0))[0]
T_HAVE_REQ = encode(HaveRequest(ROOT))[0]
T_HAVE = encode(Have(ROOT, True))[0]
T_CANCEL = encode(Cancel(0))[0]
T_PACKED = packed_header(0, 1, 1)[0]
T_HELLO = encode(Hello(1, "0.2.0", frozenset()))[0]


def frame(kind: int, body: Any) -> bytes:
    """A frame with ``body`` msgpack-encoded as is (no validation, for hostile input)."""
    data = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">BI", kind, len(data)) + data


def raw_frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BI", kind, len(data)) + data


def accepts_for(msg: Message) -> frozenset[int]:
    """The reader of the role that receives ``msg``."""
    if isinstance(msg, get_args(Request)):
        return SERVER_ACCEPTS
    if isinstance(msg, get_args(GatherMessage)):
        return GATHER_ACCEPTS
    return CLIENT_ACCEPTS


def feed_at_once(reader: MessageReader, data: bytes) -> list[Message]:
    return reader.feed(data)


def feed_bytewise(reader: MessageReader, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return out


def feed_split(reader: MessageReader, data: bytes, cuts: list[int]) -> list[Message]:
    out: list[Message] = []
    pos = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += reader.feed(data[pos:cut])
        pos = cut
    out += reader.feed(data[pos:])
    return out


def normal(msg: Message) -> Message:
    """ChunkData and ChunkPacked decode with a bytearray body; compare as bytes."""
    if isinstance(msg, ChunkData):
        return ChunkData(msg.req_id, bytes(msg.data))
    if isinstance(msg, ChunkPacked):
        return ChunkPacked(msg.req_id, msg.codec, bytes(msg.data))
    return msg


SAMPLES: list[Message] = [
    Hello(1, "0.2.0", frozenset({"pieces", "hello"})),
    ListRequest(),
    ListResponse(()),
    ListResponse((VersionInfo("llama-7b", 3, b"p" * 32, ROOT, 1 << 40, 12),)),
    ListResponse(
        (
            VersionInfo(
                "llama-7b", 3, b"p" * 32, ROOT, 1, 1, (("format", "safetensors"), ("step", "9"))
            ),
        )
    ),
    ManifestRequest("llama-7b", None),
    ManifestRequest("llama-7b", 0),
    ProgressRequest("llama-7b"),
    ProgressRequest("llama-7b", 0),
    ProgressRequest("llama-7b", 1796694380491),
    ManifestResponse(b"\x93\x01\x02\x03"),
    ChunkRequest(7, ROOT, 41),
    ChunkRequest(7, ROOT, 41, 0b1110),
    ChunkData(7, b"chunk bytes"),
    ChunkPacked(7, 2, b"packed bytes"),
    Error("not_found", "no checkpoint llama-7b"),
    Error("bad_request", "no such chunk", 9),
    PushRequest("llama-7b", 4, ROOT, 7000),
    PushRequest("llama-7b", 4, ROOT, 7000, ((b"k" * 32, "10.0.0.7", 7001), (ROOT, "h" * 255, 1))),
    PushProgress(1 << 30, 1 << 34),
    PushResult(True, "verified llama-7b@4", 1 << 34),
    HaveRequest(ROOT),
    Have(ROOT, True),
    Have(ROOT, False, b"\x05\x80"),
    Have(ROOT, False, b"\x05\x80", b"\x02"),
    Have(ROOT, False, b"\x05\x80", b"", True),
    GatherOffer("llama-7b", 3, b"\x91\x93"),
    GatherChallenge(ROOT, "rank 1 (ABCDE)"),
    GatherProof(0, b"x" * 1000),
    GatherResult(True, "signed", b"envelope"),
    GatherResult(False, "host rank 2 refused", b""),
    Cancel(17),
    PiecesRequest(7, ROOT, 41),
    PieceList(7, ()),
    PieceList(7, ((-300, 16384, b"d" * 16), (16084, 65536, b"e" * 16))),
    RangeRequest(7, ROOT, 41, ((0, 100), (4096, 1 << 20))),
]


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("how", ["at_once", "bytewise", "trailing_split"])
def test_sample_round_trip(msg: Message, how: str) -> None:
    """Each message type decodes to itself whether fed whole, bytewise or split."""
    data = encode(msg)
    reader = MessageReader(accepts_for(msg))
    if how == "at_once":
        got = feed_at_once(reader, data)
    elif how == "bytewise":
        got = feed_bytewise(reader, data)
    else:
        got = feed_split(reader, data, [1, HEADER_SIZE, len(data) - 1])
    assert [normal(m) for m in got] == [msg]


@PROPERTY
@given(msg=st.one_of(s.requests, s.responses))
def test_round_trip_at_once(msg: Message) -> None:
    """Any message fed to its receiver's reader in one piece decodes to itself."""
    got = MessageReader(accepts_for(msg)).feed(encode(msg))
    assert [normal(m) for m in got] == [msg]


@settings(max_examples=40, database=None, deadline=None)
@given(msg=st.one_of(s.requests, s.responses))
def test_round_trip_bytewise(msg: Message) -> None:
    """Any message fed one byte at a time decodes to itself, on its last byte only."""
    data = encode(msg)
    reader = MessageReader(accepts_for(msg))
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == []
    assert [normal(m) for m in reader.feed(data[-1:])] == [msg]


@PROPERTY
@given(
    msgs=st.lists(s.requests, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=10),
)
def test_requests_concatenated_random_splits(msgs: list[Message], cuts: list[int]) -> None:
    """Several requests back to back decode in order however the stream is split."""
    data = b"".join(encode(m) for m in msgs)
    assert feed_split(MessageReader(SERVER_ACCEPTS), data, cuts) == msgs


@PROPERTY
@given(
    msgs=st.lists(s.responses, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=10),
)
def test_responses_concatenated_random_splits(msgs: list[Message], cuts: list[int]) -> None:
    """Several responses back to back decode in order however the stream is split."""
    data = b"".join(encode(m) for m in msgs)
    got = feed_split(MessageReader(CLIENT_ACCEPTS), data, cuts)
    assert [normal(m) for m in got] == msgs


@PROPERTY
@given(req_id=s.req_ids, data=st.binary(min_size=1, max_size=4096))
def test_chunk_header_plus_raw_bytes(req_id: int, data: bytes) -> None:
    """``chunk_header(req_id, len) + data`` is the same frame as encoding ChunkData."""
    wire = chunk_header(req_id, len(data)) + data
    assert len(chunk_header(req_id, len(data))) == CHUNK_HEADER_SIZE
    assert wire == encode(ChunkData(req_id, data))
    got = MessageReader(CLIENT_ACCEPTS).feed(wire)
    assert got == [ChunkData(req_id, data)]


def test_max_size_chunk_accepted() -> None:
    """A chunk of exactly MAX_CHUNK bytes is within the cap."""
    data = bytes(MAX_CHUNK)
    got = MessageReader(CLIENT_ACCEPTS).feed(chunk_header(1, MAX_CHUNK) + data)
    assert len(got) == 1
    assert isinstance(got[0], ChunkData)
    assert len(got[0].data) == MAX_CHUNK


def test_large_chunk_random_splits() -> None:
    """A 1 MiB chunk split at random points arrives whole and unchanged."""
    rng = random.Random(1234)
    data = rng.randbytes(1 << 20)
    wire = chunk_header(5, len(data)) + data
    cuts = [rng.randrange(len(wire)) for _ in range(50)]
    assert feed_split(MessageReader(CLIENT_ACCEPTS), wire, cuts) == [ChunkData(5, data)]


def test_messages_and_trailing_partial_frame() -> None:
    """Whole messages are returned at once; a trailing partial frame waits for more data."""
    data = encode(ChunkRequest(1, ROOT, 0)) + encode(ChunkRequest(2, ROOT, 1))
    reader = MessageReader(SERVER_ACCEPTS)
    tail = encode(ListRequest())
    assert reader.feed(data + tail[:3]) == [ChunkRequest(1, ROOT, 0), ChunkRequest(2, ROOT, 1)]
    assert reader.feed(tail[3:]) == [ListRequest()]


def test_error_message_is_truncated() -> None:
    """An Error's message is cut to 1000 characters on the wire."""
    got = MessageReader(CLIENT_ACCEPTS).feed(encode(Error("internal", "x" * 5000)))
    assert got == [Error("internal", "x" * 1000)]


def test_encode_rejects_non_message() -> None:
    """Encoding something that is not a message is a TypeError."""
    with pytest.raises(TypeError):
        encode("ListRequest")  # type: ignore[arg-type]


# --- rejections -----------------------------------------------------------------


@pytest.mark.parametrize(
    "msg", [m for m in SAMPLES if accepts_for(m) is CLIENT_ACCEPTS and not isinstance(m, Hello)]
)
def test_server_rejects_response_types(msg: Message) -> None:
    """A server refuses any message type only a client may receive."""
    with pytest.raises(RemoteProtocolError, match="unexpected message type"):
        MessageReader(SERVER_ACCEPTS).feed(encode(msg))


@pytest.mark.parametrize(
    "msg", [m for m in SAMPLES if accepts_for(m) is SERVER_ACCEPTS and not isinstance(m, Hello)]
)
def test_client_rejects_request_types(msg: Message) -> None:
    """A client refuses any message type only a server may receive."""
    with pytest.raises(RemoteProtocolError, match="unexpected message type"):
        MessageReader(CLIENT_ACCEPTS).feed(encode(msg))


@pytest.mark.parametrize("kind", [0, 30, 255])  # 20-23: gather (issue 21 item 2)
@pytest.mark.parametrize("accepts", [SERVER_ACCEPTS, CLIENT_ACCEPTS], ids=["server", "client"])
def test_an_unknown_type_is_skipped_and_reported_not_fatal(
    kind: int, accepts: frozenset[int]
) -> None:
    """A newer peer's message type: its body is read past and it comes out
    as Unknown, and the next message parses as usual (issue 20)."""
    reader = MessageReader(accepts)
    nxt = ListRequest() if accepts is SERVER_ACCEPTS else Error("e", "m", 1)
    got = reader.feed(raw_frame(kind, msgpack.packb([1, "x" * 100])) + encode(nxt))
    assert got == [Unknown(kind), nxt]
    assert reader.feed(raw_frame(kind, b"")) == [Unknown(kind)]  # an empty body too


def test_an_unknown_type_too_large_is_fatal() -> None:
    with pytest.raises(RemoteProtocolError):
        MessageReader(SERVER_ACCEPTS).feed(raw_frame(200, b"x" * (UNKNOWN_CAP + 1)))


def test_a_hello_with_more_fields_than_this_release_knows_is_understood() -> None:
    frame = raw_frame(T_HELLO, msgpack.packb([1, "9.9.9", ["pieces", "teleport"], [7, "x"], 3]))
    (hello,) = MessageReader(SERVER_ACCEPTS).feed(frame)
    assert hello == Hello(1, "9.9.9", frozenset({"pieces", "teleport"}))


@pytest.mark.parametrize(
    ("kind", "cap", "accepts"),
    [
        (T_LIST_REQ, 4096, SERVER_ACCEPTS),
        (T_MAN_REQ, 4096, SERVER_ACCEPTS),
        (T_CHUNK_REQ, 4096, SERVER_ACCEPTS),
        (T_ERROR, 4096, CLIENT_ACCEPTS),
        (T_LIST_RESP, 4 << 20, CLIENT_ACCEPTS),
        (T_MAN_RESP, MAX_MANIFEST_BYTES + 64, CLIENT_ACCEPTS),
        (T_CHUNK, 4 + MAX_CHUNK, CLIENT_ACCEPTS),
        (T_PACKED, 4 + MAX_CHUNK, CLIENT_ACCEPTS),
    ],
)
def test_oversized_header_rejected_before_body(
    kind: int, cap: int, accepts: frozenset[int]
) -> None:
    """A header declaring more than the type's cap fails on its 5th byte, before any body."""
    header = struct.pack(">BI", kind, cap + 1)
    reader = MessageReader(accepts)
    assert reader.feed(header[:4]) == []
    with pytest.raises(RemoteProtocolError, match="too large"):
        reader.feed(header[4:])


def test_header_of_largest_size_rejected() -> None:
    """A 4 GiB length is refused immediately instead of being allocated."""
    with pytest.raises(RemoteProtocolError):
        MessageReader(CLIENT_ACCEPTS).feed(struct.pack(">BI", T_CHUNK, 0xFFFFFFFF))


@pytest.mark.parametrize("length", [0, 1, 4])
def test_chunk_without_data_rejected(length: int) -> None:
    """A ChunkData frame too short to hold a req_id and one byte is refused."""
    with pytest.raises(RemoteProtocolError):
        MessageReader(CLIENT_ACCEPTS).feed(struct.pack(">BI", T_CHUNK, length))


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (T_CHUNK_REQ, b"\xc1"),  # reserved, never valid msgpack
        (T_CHUNK_REQ, b"\x93\x01"),  # array of 3 with one element
        (T_MAN_REQ, b"\x92\xa1x\xc0\x00"),  # trailing byte after the array
        (T_LIST_REQ, b"\x81\x01\x02"),  # a map, where maps are forbidden
        (T_LIST_REQ, b"\xd4\x01\x00"),  # an ext type
        (T_MAN_REQ, b"\x92\xa2\xff\xfe\xc0"),  # invalid UTF-8 in a str
    ],
    ids=["reserved", "short-array", "trailing", "map", "ext", "bad-utf8"],
)
def test_malformed_msgpack_rejected(kind: int, data: bytes) -> None:
    """A body that is not one clean msgpack value is refused."""
    with pytest.raises(RemoteProtocolError, match="malformed"):
        MessageReader(SERVER_ACCEPTS).feed(raw_frame(kind, data))


BAD_REQUESTS = {
    "list-req-not-array": (T_LIST_REQ, 0),
    "list-req-extra": (T_LIST_REQ, [1]),
    "chunk-root-31": (T_CHUNK_REQ, [1, b"r" * 31, 0]),
    "chunk-root-33": (T_CHUNK_REQ, [1, b"r" * 33, 0]),
    "chunk-root-str": (T_CHUNK_REQ, [1, "r" * 32, 0]),
    "chunk-negative-req-id": (T_CHUNK_REQ, [-1, ROOT, 0]),
    "chunk-negative-index": (T_CHUNK_REQ, [1, ROOT, -1]),
    "chunk-req-id-too-big": (T_CHUNK_REQ, [1 << 32, ROOT, 0]),
    "chunk-index-too-big": (T_CHUNK_REQ, [1, ROOT, (1 << 32) + 1]),
    "chunk-bool-req-id": (T_CHUNK_REQ, [True, ROOT, 0]),
    "chunk-bool-index": (T_CHUNK_REQ, [1, ROOT, False]),
    "chunk-float-index": (T_CHUNK_REQ, [1, ROOT, 1.0]),
    "chunk-extra-field": (T_CHUNK_REQ, [1, ROOT, 0, 0b10, 0]),
    "chunk-accept-negative": (T_CHUNK_REQ, [1, ROOT, 0, -1]),
    "chunk-accept-too-big": (T_CHUNK_REQ, [1, ROOT, 0, 1 << 32]),
    "chunk-accept-bool": (T_CHUNK_REQ, [1, ROOT, 0, True]),
    "chunk-accept-nil": (T_CHUNK_REQ, [1, ROOT, 0, None]),
    "chunk-accept-bytes": (T_CHUNK_REQ, [1, ROOT, 0, b"\x0e"]),
    "chunk-missing-field": (T_CHUNK_REQ, [1, ROOT]),
    "man-req-name-bytes": (T_MAN_REQ, [b"llama", None]),
    "progress-req-after-negative": (T_PROGRESS_REQ, ["m", -1]),
    "progress-req-after-huge": (T_PROGRESS_REQ, ["m", 10**16]),
    "progress-req-after-str": (T_PROGRESS_REQ, ["m", "1"]),
    "progress-req-after-bool": (T_PROGRESS_REQ, ["m", True]),
    "progress-req-extra": (T_PROGRESS_REQ, ["m", 1, 2]),
    "man-req-name-too-long": (T_MAN_REQ, ["x" * 129, None]),
    "man-req-negative-version": (T_MAN_REQ, ["llama", -1]),
    "man-req-bool-version": (T_MAN_REQ, ["llama", True]),
    "man-req-version-too-big": (T_MAN_REQ, ["llama", 1 << 63]),
    "man-req-extra": (T_MAN_REQ, ["llama", None, None]),
    "push-port-zero": (T_PUSH_REQ, ["llama", 1, ROOT, 0]),
    "push-port-too-big": (T_PUSH_REQ, ["llama", 1, ROOT, 65536]),
    "push-root-31": (T_PUSH_REQ, ["llama", 1, b"r" * 31, 7000]),
    "push-name-too-long": (T_PUSH_REQ, ["x" * 129, 1, ROOT, 7000]),
    "push-short": (T_PUSH_REQ, ["llama", 1, ROOT]),
    "push-peers-not-list": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, {}]),
    "push-peer-short-key": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[b"k" * 31, "h", 1]]]),
    "push-peer-empty-host": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "", 1]]]),
    "push-peer-long-host": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "h" * 256, 1]]]),
    "push-peer-port-zero": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "h", 0]]]),
    "push-peer-host-bytes": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, b"h", 1]]]),
    "push-peer-host-idna": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "\u00e4" * 100, 1]]]),
    "push-peer-extra": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "h", 1, 2]]]),
    "push-too-many-peers": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [[ROOT, "h", 1]] * 65]),
    "push-extra-field": (T_PUSH_REQ, ["llama", 1, ROOT, 7000, [], 0]),
    "have-req-root-31": (T_HAVE_REQ, [b"r" * 31]),
    "have-req-extra": (T_HAVE_REQ, [ROOT, 0]),
    "cancel-negative": (T_CANCEL, [-1]),
    "cancel-too-big": (T_CANCEL, [1 << 32]),
    "cancel-bool": (T_CANCEL, [True]),
    "pieces-req-root-31": (T_PIECES_REQ, [1, b"r" * 31, 0]),
    "pieces-req-negative-index": (T_PIECES_REQ, [1, ROOT, -1]),
    "pieces-req-index-too-big": (T_PIECES_REQ, [1, ROOT, 1 << 40]),
    "pieces-req-bool-index": (T_PIECES_REQ, [1, ROOT, True]),
    "pieces-req-extra": (T_PIECES_REQ, [1, ROOT, 0, 0]),
    "range-req-empty": (T_RANGE_REQ, [1, ROOT, 0, []]),
    "range-req-negative-start": (T_RANGE_REQ, [1, ROOT, 0, [[-1, 10]]]),
    "range-req-zero-length": (T_RANGE_REQ, [1, ROOT, 0, [[0, 0]]]),
    "range-req-past-max-chunk": (T_RANGE_REQ, [1, ROOT, 0, [[MAX_CHUNK - 1, 2]]]),
    "range-req-longer-than-a-chunk": (T_RANGE_REQ, [1, ROOT, 0, [[0, MAX_CHUNK]] * 2]),
    "range-req-too-many": (T_RANGE_REQ, [1, ROOT, 0, [[0, 1]] * 4097]),
    "range-req-float": (T_RANGE_REQ, [1, ROOT, 0, [[0.0, 1]]]),
    "range-req-triple": (T_RANGE_REQ, [1, ROOT, 0, [[0, 1, 2]]]),
    "range-req-not-list": (T_RANGE_REQ, [1, ROOT, 0, {}]),
}


@pytest.mark.parametrize(("kind", "body"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_wrong_request_fields_rejected(kind: int, body: Any) -> None:
    """A request with a wrong field type, range or count is refused."""
    with pytest.raises(RemoteProtocolError, match="malformed"):
        MessageReader(SERVER_ACCEPTS).feed(frame(kind, body))


_GOOD_ENTRY = ["llama", 1, b"p" * 32, ROOT, 10, 1]
BAD_RESPONSES = {
    "list-entry-short": (T_LIST_RESP, [_GOOD_ENTRY[:5]]),
    "list-entry-extra": (T_LIST_RESP, [[*_GOOD_ENTRY, 0]]),
    "list-entry-8": (T_LIST_RESP, [[*_GOOD_ENTRY, [], 0]]),
    "list-meta-unknown-key": (T_LIST_RESP, [[*_GOOD_ENTRY, [["loss", "1"]]]]),
    "list-meta-unsorted": (T_LIST_RESP, [[*_GOOD_ENTRY, [["step", "1"], ["format", "x"]]]]),
    "list-meta-duplicate": (T_LIST_RESP, [[*_GOOD_ENTRY, [["step", "1"], ["step", "2"]]]]),
    "list-meta-long-value": (T_LIST_RESP, [[*_GOOD_ENTRY, [["license", "x" * 129]]]]),
    "list-meta-long-utf8": (T_LIST_RESP, [[*_GOOD_ENTRY, [["license", "\U0001f642" * 33]]]]),
    "list-meta-not-pair": (T_LIST_RESP, [[*_GOOD_ENTRY, [["step"]]]]),
    "list-meta-int-value": (T_LIST_RESP, [[*_GOOD_ENTRY, [["step", 5]]]]),
    "list-meta-too-many": (T_LIST_RESP, [[*_GOOD_ENTRY, [["step", "1"]] * 5]]),
    "list-entry-publisher-31": (T_LIST_RESP, [["llama", 1, b"p" * 31, ROOT, 10, 1]]),
    "list-entry-bool-version": (T_LIST_RESP, [["llama", True, b"p" * 32, ROOT, 10, 1]]),
    "list-entry-negative-size": (T_LIST_RESP, [["llama", 1, b"p" * 32, ROOT, -10, 1]]),
    "list-entry-name-too-long": (T_LIST_RESP, [["x" * 129, 1, b"p" * 32, ROOT, 10, 1]]),
    "list-entry-not-array": (T_LIST_RESP, ["llama"]),
    "man-resp-str": (T_MAN_RESP, ["envelope"]),
    "man-resp-extra": (T_MAN_RESP, [b"envelope", b""]),
    "error-code-bytes": (T_ERROR, [b"internal", "m", None]),
    "error-negative-req-id": (T_ERROR, ["internal", "m", -1]),
    "error-bool-req-id": (T_ERROR, ["internal", "m", False]),
    "error-short": (T_ERROR, ["internal", "m"]),
    "push-result-int-ok": (T_PUSH_RESULT, [1, "m", 0]),
    "push-result-negative": (T_PUSH_RESULT, [True, "m", -1]),
    "push-progress-negative": (T_PUSH_PROGRESS, [-1, 10]),
    "push-progress-float": (T_PUSH_PROGRESS, [1.0, 10]),
    "push-progress-extra": (T_PUSH_PROGRESS, [1, 10, 0]),
    "push-progress-huge": (T_PUSH_PROGRESS, [1, 1 << 63]),
    "have-int-complete": (T_HAVE, [ROOT, 1, b""]),
    "have-bits-str": (T_HAVE, [ROOT, False, "ff"]),
    "have-bits-too-long": (T_HAVE, [ROOT, False, b"\xff" * ((1 << 16) + 1)]),
    "have-root-33": (T_HAVE, [b"r" * 33, True, b""]),
    "have-fetching-str": (T_HAVE, [ROOT, False, b"", "ff"]),
    "have-fetching-too-long": (T_HAVE, [ROOT, False, b"", b"\xff" * ((1 << 16) + 1)]),
    "have-extra": (T_HAVE, [ROOT, False, b"", b"", b""]),
    "pieces-digest-15": (T_PIECES, [1, [[0, 100, b"d" * 15]]]),
    "pieces-digest-str": (T_PIECES, [1, [[0, 100, "d" * 16]]]),
    "pieces-zero-length": (T_PIECES, [1, [[0, 0, b"d" * 16]]]),
    "pieces-too-long": (T_PIECES, [1, [[0, (64 << 10) + 1, b"d" * 16]]]),
    "pieces-start-far-before": (T_PIECES, [1, [[-(1 << 20), 100, b"d" * 16]]]),
    "pieces-too-many": (T_PIECES, [1, [[0, 100, b"d" * 16]] * 4097]),
    "pieces-not-triple": (T_PIECES, [1, [[0, 100]]]),
    "pieces-bool-start": (T_PIECES, [1, [[False, 100, b"d" * 16]]]),
}


@pytest.mark.parametrize(("kind", "body"), BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_wrong_response_fields_rejected(kind: int, body: Any) -> None:
    """A response with a wrong field type, range or count is refused."""
    with pytest.raises(RemoteProtocolError, match="malformed"):
        MessageReader(CLIENT_ACCEPTS).feed(frame(kind, body))


def test_list_response_with_too_many_entries_rejected() -> None:
    """A list response longer than MAX_LIST_ENTRIES is refused."""
    from p2pckpt.wire.messages import MAX_LIST_ENTRIES

    body = [_GOOD_ENTRY] * (MAX_LIST_ENTRIES + 1)
    with pytest.raises(RemoteProtocolError, match="malformed"):
        MessageReader(CLIENT_ACCEPTS).feed(frame(T_LIST_RESP, body))


@pytest.mark.parametrize(
    "bad",
    [
        raw_frame(T_CHUNK_REQ, b"\xc1"),
        struct.pack(">BI", T_CHUNK_REQ, 4097),
        raw_frame(T_ERROR, msgpack.packb([])),
    ],
    ids=["garbage", "oversized", "wrong-type"],
)
def test_failed_reader_stays_failed(bad: bytes) -> None:
    """After any rejection, every later feed raises, even of valid data or nothing."""
    reader = MessageReader(SERVER_ACCEPTS)
    with pytest.raises(RemoteProtocolError):
        reader.feed(bad)
    for data in (encode(ListRequest()), b"", encode(ChunkRequest(1, ROOT, 0))):
        with pytest.raises(RemoteProtocolError, match="already failed"):
            reader.feed(data)


def test_valid_messages_before_a_bad_one_are_not_returned_after_failure() -> None:
    """A feed holding good frames then a bad one raises; the reader is failed afterwards."""
    reader = MessageReader(SERVER_ACCEPTS)
    with pytest.raises(RemoteProtocolError):
        reader.feed(encode(ListRequest()) + raw_frame(T_CHUNK_REQ, b"\xc1"))
    with pytest.raises(RemoteProtocolError):
        reader.feed(encode(ListRequest()))


def test_push_request_without_peer_list_still_decodes() -> None:
    """A pusher from before co-target hints sends four fields: no peers."""
    (msg,) = MessageReader(SERVER_ACCEPTS).feed(frame(T_PUSH_REQ, ["llama", 1, ROOT, 7000]))
    assert msg == PushRequest("llama", 1, ROOT, 7000, ())


def test_push_request_with_most_peers_fits_its_cap() -> None:
    """The largest valid peer list (all hosts at the 255-byte limit) is accepted."""
    peers = tuple((bytes([i]) * 32, "h" * 255, 65535) for i in range(MAX_PUSH_PEERS))
    msg = PushRequest("x" * 128, 1 << 40, ROOT, 65535, peers)
    assert MessageReader(SERVER_ACCEPTS).feed(encode(msg)) == [msg]


# --- chunk packing (issue 7) ------------------------------------------------------


def test_chunk_request_without_codecs_is_the_three_field_form() -> None:
    """A request offering no codecs encodes as the 3-field array older seeders
    know, and a 3-field request decodes as offering none (raw data only)."""
    assert encode(ChunkRequest(3, ROOT, 9)) == frame(T_CHUNK_REQ, [3, ROOT, 9])
    (msg,) = MessageReader(SERVER_ACCEPTS).feed(frame(T_CHUNK_REQ, [3, ROOT, 9]))
    assert msg == ChunkRequest(3, ROOT, 9, 0)
    (msg,) = MessageReader(SERVER_ACCEPTS).feed(frame(T_CHUNK_REQ, [3, ROOT, 9, 0b1110]))
    assert msg == ChunkRequest(3, ROOT, 9, 0b1110)


def test_unknown_accept_bits_are_kept_for_the_seeder_to_ignore() -> None:
    """A newer puller may offer codecs we do not know: the request still decodes."""
    (msg,) = MessageReader(SERVER_ACCEPTS).feed(frame(T_CHUNK_REQ, [3, ROOT, 9, (1 << 32) - 1]))
    assert isinstance(msg, ChunkRequest) and msg.accept == (1 << 32) - 1


@PROPERTY
@given(
    req_id=s.req_ids, codec=st.sampled_from([1, 2, 3]), data=st.binary(min_size=1, max_size=4096)
)
def test_packed_header_plus_bytes(req_id: int, codec: int, data: bytes) -> None:
    """``packed_header(req_id, codec, len) + data`` is the frame encode gives ChunkPacked."""
    wire = packed_header(req_id, codec, len(data)) + data
    assert len(packed_header(req_id, codec, len(data))) == CHUNK_HEADER_SIZE + 1
    assert wire == encode(ChunkPacked(req_id, codec, data))
    assert feed_bytewise(MessageReader(CLIENT_ACCEPTS), wire) == [ChunkPacked(req_id, codec, data)]


def test_max_size_packed_chunk_accepted() -> None:
    """A packed body of MAX_CHUNK - 1 bytes fills exactly the raw chunk's cap."""
    data = bytes(MAX_CHUNK - 1)
    (got,) = MessageReader(CLIENT_ACCEPTS).feed(packed_header(1, 2, len(data)) + data)
    assert isinstance(got, ChunkPacked) and len(got.data) == MAX_CHUNK - 1


@pytest.mark.parametrize("codec", [0, 4, 255])
def test_packed_chunk_with_unknown_codec_rejected(codec: int) -> None:
    """A codec byte outside the known codecs fails as soon as it is read."""
    reader = MessageReader(CLIENT_ACCEPTS)
    wire = packed_header(1, codec, 100)
    with pytest.raises(RemoteProtocolError, match="codec"):
        reader.feed(wire)  # no body yet: refused before it is allocated
    with pytest.raises(RemoteProtocolError, match="already failed"):
        reader.feed(bytes(100))


@pytest.mark.parametrize("length", [0, 1, 4, 5])
def test_packed_chunk_without_data_rejected(length: int) -> None:
    """A ChunkPacked frame too short for a req_id, a codec and one byte is refused."""
    with pytest.raises(RemoteProtocolError, match="too short"):
        MessageReader(CLIENT_ACCEPTS).feed(struct.pack(">BI", T_PACKED, length))


def test_server_rejects_packed_chunks() -> None:
    """Only a puller receives packed chunks."""
    with pytest.raises(RemoteProtocolError, match="unexpected message type"):
        MessageReader(SERVER_ACCEPTS).feed(encode(ChunkPacked(1, 1, b"x")))


def test_packed_chunk_truncated_waits_then_nothing() -> None:
    """A packed frame cut short yields nothing (the connection's end reports it)."""
    wire = encode(ChunkPacked(1, 3, b"z" * 50))
    reader = MessageReader(CLIENT_ACCEPTS)
    assert reader.feed(wire[:-1]) == []
    assert [normal(m) for m in reader.feed(wire[-1:])] == [ChunkPacked(1, 3, b"z" * 50)]
