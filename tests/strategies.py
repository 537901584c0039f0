"""Shared Hypothesis strategies: wire messages and (unsigned) manifests.

Every value drawn here is one the codec or ``manifest.sign`` accepts as is and
returns unchanged after a round trip: text fields stay within the decoders'
length limits, manifest files are sorted by path and their chunks cover each
file exactly.
"""

from __future__ import annotations

from hypothesis import strategies as st

from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import MAX_CHUNK, Chunk
from p2pckpt.manifest.manifest import (
    MAX_META_KEY,
    MAX_VERSION,
    FileEntry,
    Manifest,
)
from p2pckpt.wire.messages import (
    LIST_META_KEYS,
    LIST_META_VALUE,
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

U32_MAX = (1 << 32) - 1

digests = st.binary(min_size=32, max_size=32)
req_ids = st.integers(0, U32_MAX)
peer_ids = st.builds(PeerId, digests)

# A checkpoint name as NAME_RE allows: alphanumeric first, then up to 127 of [A-Za-z0-9._-].
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._-", max_size=127),
)

# --- wire messages --------------------------------------------------------------

version_infos = st.builds(
    VersionInfo,
    name=names,
    version=st.integers(0, MAX_VERSION),
    publisher=digests,
    root=digests,
    total_bytes=st.integers(0, 1 << 62),
    file_count=st.integers(0, 1 << 32),
    meta=st.dictionaries(
        st.sampled_from(LIST_META_KEYS), st.text(max_size=LIST_META_VALUE // 4), max_size=4
    ).map(lambda d: tuple(sorted(d.items()))),
)

list_requests = st.just(ListRequest())
list_responses = st.builds(ListResponse, st.lists(version_infos, max_size=5).map(tuple))
manifest_requests = st.builds(
    ManifestRequest,
    name=st.text(max_size=128),
    version=st.none() | st.integers(0, MAX_VERSION),
)
manifest_responses = st.builds(ManifestResponse, st.binary(max_size=2048))
chunk_requests = st.builds(
    ChunkRequest,
    req_id=req_ids,
    root=digests,
    index=st.integers(0, 1 << 32),
    accept=st.just(0) | st.integers(0, U32_MAX),
)
# The reader refuses an empty ChunkData body (no chunk is empty).
chunk_datas = st.builds(ChunkData, req_id=req_ids, data=st.binary(min_size=1, max_size=4096))
chunk_packeds = st.builds(
    ChunkPacked,
    req_id=req_ids,
    codec=st.sampled_from([1, 2, 3]),
    data=st.binary(min_size=1, max_size=4096),
)
# Error codes are cut to 64 characters on decode; messages are kept short enough
# that even 4-byte UTF-8 stays under the 4 KiB control-message cap.
errors = st.builds(
    Error,
    code=st.text(max_size=64),
    message=st.text(max_size=200),
    req_id=st.none() | req_ids,
)

push_requests = st.builds(
    PushRequest,
    name=st.text(max_size=128),
    version=st.integers(0, MAX_VERSION),
    root=digests,
    port=st.integers(1, 65535),
)
push_progresses = st.builds(
    PushProgress, done=st.integers(0, 1 << 62), total=st.integers(0, 1 << 62)
)
push_results = st.builds(
    PushResult,
    ok=st.booleans(),
    message=st.text(max_size=200),
    bytes_total=st.integers(0, 1 << 62),
)

have_requests = st.builds(HaveRequest, root=digests)
haves = st.builds(Have, root=digests, complete=st.booleans(), bits=st.binary(max_size=512))
cancels = st.builds(Cancel, req_id=req_ids)

requests: st.SearchStrategy[Message] = st.one_of(
    list_requests, manifest_requests, chunk_requests, push_requests, have_requests, cancels
)
responses: st.SearchStrategy[Message] = st.one_of(
    list_responses,
    manifest_responses,
    chunk_datas,
    chunk_packeds,
    errors,
    push_progresses,
    push_results,
    haves,
)

# --- manifests ------------------------------------------------------------------


@st.composite
def chunk_lists(draw: st.DrawFn, max_chunks: int = 4) -> tuple[int, tuple[Chunk, ...]]:
    """``(size, chunks)``: contiguous chunks from offset 0 that cover ``size`` exactly."""
    lengths = draw(st.lists(st.integers(1, MAX_CHUNK), max_size=max_chunks))
    chunks = []
    offset = 0
    for length in lengths:
        chunks.append(Chunk(offset, length, draw(digests)))
        offset += length
    return offset, tuple(chunks)


# A path is 0..2 directories "dN" and a leaf "f_N.bin": files never share a name
# with a directory, so no file is a prefix directory of another.
relpaths = st.builds(
    lambda dirs, leaf: "/".join([*(f"d{d}" for d in dirs), f"f_{leaf}.bin"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.integers(0, 20),
)


@st.composite
def file_entries(draw: st.DrawFn, path: str) -> FileEntry:
    size, chunks = draw(chunk_lists())
    return FileEntry(path, size, chunks)


meta_maps = st.dictionaries(
    st.text(
        alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
        min_size=1,
        max_size=MAX_META_KEY,
    ).filter(str.isprintable),
    st.text(max_size=64),
    max_size=4,
)


@st.composite
def manifests(draw: st.DrawFn, publisher: PeerId | None = None) -> Manifest:
    """A valid unsigned manifest, files sorted by path as the canonical form keeps them."""
    kind = draw(st.sampled_from(["file", "dir"]))
    max_files = 1 if kind == "file" else 5
    paths = sorted(draw(st.lists(relpaths, min_size=1, max_size=max_files, unique=True)))
    files = tuple(draw(file_entries(p)) for p in paths)
    return Manifest(
        name=draw(names),
        version=draw(st.integers(0, MAX_VERSION)),
        publisher=publisher if publisher is not None else draw(peer_ids),
        created=draw(st.integers(0, 1 << 40)),
        meta=draw(meta_maps),
        kind=kind,
        files=files,
    )
