"""Application messages exchanged inside the encrypted channel.

Frozen values with validating constructors; ``codec.py`` is the only module
that turns them into bytes. The conversation is request/response, client
(puller) to server (seeder)::

    ListRequest            -> ListResponse | Error
    ManifestRequest        -> ManifestResponse | Error
    ChunkRequest (pipelined, at most MAX_OUTSTANDING per connection)
                           -> ChunkData | ChunkPacked | Error(req_id)
                              (ChunkPacked only with a codec the request's
                              ``accept`` bitmask offers, see packing.py)
    Cancel(req_id)         -> nothing (a queued request is dropped; one already
                              sent still arrives and is ignored)
    HaveRequest(root)      -> Have | Error   (which chunks the server holds:
                              all of a catalogued version, or the verified
                              part of one it is pulling itself)
    PiecesRequest          -> PieceList | Error(req_id)   (a chunk's content-
                              defined pieces, to match against local bytes)
    RangeRequest           -> ChunkData | Error(req_id)   (byte ranges of one
                              chunk, concatenated; the puller assembles the
                              chunk and checks its hash)
    PushRequest            -> PushProgress* then PushResult | Error
                              (needs the "push" role; progress about every
                              PUSH_PROGRESS_INTERVAL while the target pulls)
    ProgressRequest(name)  -> ManifestResponse | Error   (feature "in-progress":
                              the signed in-progress manifest of a version
                              the server is still writing, issue 21; with
                              ``after``, feature "progress-wait": answered
                              only once the offer differs from sequence
                              ``after``, or MAX_PROGRESS_WAIT passed)
    Hello                  -> Hello   (first, from a client of 0.2.0 or later:
                              protocol version, release and feature names,
                              see ``features.py``; a 0.1.0 server drops the
                              connection, and the client dials again without)
    (a type this release does not know)
                           -> Error(UNSUPPORTED)   (the connection stays up)

An ``Error`` without ``req_id`` ends the connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from p2pckpt.errors import LocalProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK
from p2pckpt.manifest.manifest import MAX_CHUNKS
from p2pckpt.manifest.pieces import DIGEST_BYTES, MAX_PIECE, PAD

MAX_OUTSTANDING = 64
MAX_HAVE_BYTES = MAX_CHUNKS // 8  # one bit per chunk
PUSH_PROGRESS_INTERVAL = 0.5
MAX_LIST_ENTRIES = 4096
MAX_PUSH_PEERS = 64  # co-targets named in one PushRequest
MAX_PIECES = 4096  # pieces listed for one chunk (16 MiB of 4 KiB ones), ranges asked at once
# Manifest meta keys a listing carries (what `ls` shows), each value at most
# LIST_META_VALUE bytes of UTF-8 (so MAX_LIST_ENTRIES entries fit the ListResponse cap);
# the rest stays in the manifest.
LIST_META_KEYS = ("base_model", "format", "license", "step")
LIST_META_VALUE = 128

# Error codes (stable strings, mapped to exit codes by the CLI).
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not_found"
SOURCE_CHANGED = "source_changed"
TOO_MANY_REQUESTS = "too_many_requests"
BAD_REQUEST = "bad_request"
INTERNAL = "internal"
UNSUPPORTED = "unsupported"  # a message type this release does not know

MAX_FEATURES = 64  # feature names in one Hello
MAX_FEATURE_NAME = 32
MAX_RELEASE = 64  # characters of a release string


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise LocalProtocolError(what)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: int
    publisher: bytes
    root: bytes
    total_bytes: int
    file_count: int
    meta: tuple[tuple[str, str], ...] = ()  # sorted LIST_META_KEYS pairs

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.meta]
        _check(keys == sorted(set(keys)), "list meta keys sorted and unique")
        for key, value in self.meta:
            _check(key in LIST_META_KEYS, "list meta key")
            _check(len(value.encode()) <= LIST_META_VALUE, "list meta value too long")


def list_meta(meta: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of a manifest's meta that a listing carries (long values are
    left out rather than cut: a clipped licence or model name would mislead)."""
    return tuple(
        (k, meta[k])
        for k in LIST_META_KEYS
        if k in meta and len(meta[k].encode()) <= LIST_META_VALUE
    )


@dataclass(frozen=True, slots=True)
class ListRequest:
    pass


@dataclass(frozen=True, slots=True)
class ListResponse:
    versions: tuple[VersionInfo, ...]

    def __post_init__(self) -> None:
        _check(len(self.versions) <= MAX_LIST_ENTRIES, "too many versions in a list")


@dataclass(frozen=True, slots=True)
class ManifestRequest:
    name: str
    version: int | None


@dataclass(frozen=True, slots=True)
class ProgressRequest:
    """Which finished files of ``name``'s version being written are offered
    now (only towards a server that named "in-progress"). With ``after``
    (only towards a server that named "progress-wait"): a long poll, answered
    once the offer differs from the in-progress sequence ``after`` (0: none
    offered), or the server's wait ends (MAX_PROGRESS_WAIT)."""

    name: str
    after: int | None = None


@dataclass(frozen=True, slots=True)
class ManifestResponse:
    envelope: bytes


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """``accept``: the codecs the puller can unpack (bit c = codec c of
    ``wire/packing.py``); 0 (or absent on the wire) means raw only."""

    req_id: int
    root: bytes
    index: int
    accept: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")
        _check(len(self.root) == 32, "root is 32 bytes")
        _check(0 <= self.accept < 1 << 32, "accept out of range")


@dataclass(frozen=True, slots=True)
class Cancel:
    req_id: int

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")


@dataclass(frozen=True, slots=True)
class HaveRequest:
    root: bytes

    def __post_init__(self) -> None:
        _check(len(self.root) == 32, "root is 32 bytes")


@dataclass(frozen=True, slots=True)
class Have:
    """``complete``, or ``bits``: bit i (LSB first in byte i // 8) = chunk i.

    A source that is itself pulling also says which chunks it is
    ``fetching`` (same encoding), so other pullers leave those to it rather
    than ask the seeder for the same chunks."""

    root: bytes
    complete: bool
    bits: bytes = b""
    fetching: bytes = b""
    # ``bits`` will not grow: a host's share of a multi-host version (its own
    # files only; feature ``multi-host``), so a puller need not wait for more.
    fixed: bool = False

    def __post_init__(self) -> None:
        _check(len(self.root) == 32, "root is 32 bytes")
        _check(len(self.bits) <= MAX_HAVE_BYTES, "bitfield too long")
        _check(len(self.fetching) <= MAX_HAVE_BYTES, "bitfield too long")


@dataclass(frozen=True, slots=True)
class PushRequest:
    """Ask the server (a daemon) to pull ``name@version`` (``root``) back from
    us, listening on ``port`` at the address this connection comes from.

    ``peers`` are the push's other targets (peer key, host, port), so that
    the targets also pull from each other."""

    name: str
    version: int
    root: bytes
    port: int
    peers: tuple[tuple[bytes, str, int], ...] = ()

    def __post_init__(self) -> None:
        _check(len(self.root) == 32, "root is 32 bytes")
        _check(0 < self.port < 65536, "port out of range")
        _check(len(self.peers) <= MAX_PUSH_PEERS, "too many push peers")
        for key, host, port in self.peers:
            _check(len(key) == 32, "peer key is 32 bytes")
            _check(0 < len(host) <= 255 and host.isascii(), "peer host")
            _check(0 < port < 65536, "peer port out of range")


@dataclass(frozen=True, slots=True)
class PushResult:
    ok: bool
    message: str
    bytes_total: int = 0


@dataclass(frozen=True, slots=True)
class PushProgress:
    """How far the target of a push has got (bytes of the whole version)."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class ChunkData:
    req_id: int
    data: bytes | bytearray


@dataclass(frozen=True, slots=True)
class ChunkPacked:
    """A chunk packed with ``codec``; ``data`` is shorter than the chunk and
    unpacks to exactly its length (checked by the puller, then the hash)."""

    req_id: int
    codec: int
    data: bytes | bytearray

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")
        _check(0 < self.codec < 256, "codec out of range")


MAX_ERROR_CODE_BYTES = 64
MAX_ERROR_MESSAGE_BYTES = 1000


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary."""
    return text.encode(errors="replace")[:max_bytes].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Error:
    """An error answer; code and message are clipped so any Error fits its frame."""

    code: str
    message: str
    req_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", clip_utf8(self.code, MAX_ERROR_CODE_BYTES))
        object.__setattr__(self, "message", clip_utf8(self.message, MAX_ERROR_MESSAGE_BYTES))


@dataclass(frozen=True, slots=True)
class PiecesRequest:
    """The content-defined pieces of chunk ``index`` (``manifest/pieces.py``)."""

    req_id: int
    root: bytes
    index: int

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")
        _check(len(self.root) == 32, "root is 32 bytes")
        _check(0 <= self.index < MAX_CHUNKS, "index out of range")


@dataclass(frozen=True, slots=True)
class PieceList:
    """``(start, length, digest)`` per piece, ``start`` relative to the chunk
    (a first piece may begin up to PAD bytes before it, a last one end after it)."""

    req_id: int
    pieces: tuple[tuple[int, int, bytes], ...]

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")
        _check(len(self.pieces) <= MAX_PIECES, "too many pieces")
        for start, length, digest in self.pieces:
            _check(-PAD <= start <= MAX_CHUNK and 0 < length <= MAX_PIECE, "piece out of range")
            _check(len(digest) == DIGEST_BYTES, "piece digest size")


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Bytes ``[start, start + length)`` of chunk ``index``, for each range, in
    order and concatenated (one ChunkData answers it)."""

    req_id: int
    root: bytes
    index: int
    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        _check(0 <= self.req_id < 1 << 32, "req_id out of range")
        _check(len(self.root) == 32, "root is 32 bytes")
        _check(0 <= self.index < MAX_CHUNKS, "index out of range")
        _check(0 < len(self.ranges) <= MAX_PIECES, "range count")
        _check(all(a >= 0 and n > 0 and a + n <= MAX_CHUNK for a, n in self.ranges), "range bounds")
        _check(sum(n for _, n in self.ranges) <= MAX_CHUNK, "ranges longer than a chunk")


@dataclass(frozen=True, slots=True)
class Hello:
    """What a node speaks: its protocol version, its release (for people),
    and the names of the optional features it understands."""

    protocol: int
    release: str
    features: frozenset[str]

    def __post_init__(self) -> None:
        _check(1 <= self.protocol < 1 << 16, "protocol version out of range")
        _check(len(self.release) <= MAX_RELEASE and self.release.isprintable(), "release")
        _check(len(self.features) <= MAX_FEATURES, "too many features")
        _check(
            all(0 < len(f) <= MAX_FEATURE_NAME and f.isprintable() for f in self.features),
            "feature name",
        )


@dataclass(frozen=True, slots=True)
class GatherOffer:
    """A contributor's file entries for a multi-host version (issue 21 item
    2): ``entries`` is their msgpack (``manifest/gather.py``), decoded and
    checked by the coordinator with a manifest's limits. Sent only to a
    coordinator that named the ``gather`` feature."""

    name: str
    version: int
    entries: bytes


@dataclass(frozen=True, slots=True)
class GatherChallenge:
    """The coordinator's random seed, once every contributor is in, and the
    label the contributor is known by (the picks depend on both)."""

    seed: bytes
    label: str

    def __post_init__(self) -> None:
        _check(len(self.seed) == 32, "seed is 32 bytes")


@dataclass(frozen=True, slots=True)
class GatherProof:
    """The bytes of the ``index``-th chunk the challenge picked."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class GatherResult:
    """The signed envelope (``ok``), or why nothing was signed."""

    ok: bool
    message: str
    envelope: bytes = b""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message of a type this release does not know (its body skipped):
    a newer peer's. Answered, never fatal."""

    kind: int


Request = (
    Hello
    | Unknown
    | ListRequest
    | ManifestRequest
    | ProgressRequest
    | ChunkRequest
    | PushRequest
    | HaveRequest
    | Cancel
    | PiecesRequest
    | RangeRequest
)
Response = (
    Hello
    | GatherChallenge
    | GatherResult
    | PieceList
    | ListResponse
    | ManifestResponse
    | ChunkData
    | ChunkPacked
    | Error
    | PushProgress
    | PushResult
    | Have
)
# What a contributor sends a coordinator's own listener (multi-host publish).
GatherMessage = GatherOffer | GatherProof
Message = Request | Response | GatherMessage
