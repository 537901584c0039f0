"""The seeder's answers to List, Manifest and Have requests.

Plain functions of what this node holds: the catalog of published (and
pulled) versions, and the versions it is pulling right now (``partials``),
whose verified chunks it already serves (issue 5). A partial newer than
anything in the catalog is offered by Manifest, so pullers can feed each
other. A host's share of a multi-host version (issue 21 item 2) is offered
too, with a Have that lists its own files' chunks and, to a peer that speaks
``multi-host``, says they are all it will ever have (``fixed``). Pure: no trio, no
sockets (the catalog is SQLite, read in place); the server checks the "pull" role before asking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from p2pckpt.errors import ManifestError, RemoteProtocolError
from p2pckpt.manifest.manifest import validate_name
from p2pckpt.store.catalog import Catalog
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.wire import messages as m
from p2pckpt.wire.features import LEGACY

SHARE_CACHE: Final = 16  # shares' Have bitfields kept (decoding a manifest is costly)
_share_bits: OrderedDict[tuple[bytes, str], bytes] = OrderedDict()

Answer = m.ListResponse | m.ManifestResponse | m.Have | m.Error


def answer(
    req: m.Request,
    catalog: Catalog | None,
    partials: Partials | None = None,
    given: Callable[[bytes], int] | None = None,
    progress: ProgressBook | None = None,
    features: frozenset[str] = LEGACY,
) -> Answer:
    """The response to one List, Manifest or Have request (``catalog`` None:
    a plain pull's server, which offers only what it is pulling; ``given``:
    which chunks of a version this server's connected peers were given).

    Raises:
        RemoteProtocolError: any other request (chunks and pushes are not
            answered here).
    """
    match req:
        case m.ListRequest():
            return list_versions(catalog)
        case m.ManifestRequest(name, version):
            return manifest_of(catalog, partials, name, version)
        case m.ProgressRequest(name):
            return in_progress_of(progress, name)
        case m.HaveRequest(root):
            if progress is not None and progress.get(root) is not None:
                return m.Have(root, True)  # every finished file it names is here
            return have(catalog, partials, root, given, "multi-host" in features)
    raise RemoteProtocolError(f"unexpected request {type(req).__name__}")


def list_versions(catalog: Catalog | None) -> m.ListResponse:
    """The newest MAX_LIST_ENTRIES versions held, with their listed metadata."""
    if catalog is None:
        return m.ListResponse(())
    # never a pulled partial copy; a multi-host share, yes
    entries = catalog.offered_versions()[-m.MAX_LIST_ENTRIES :]
    metas = catalog.metas()
    return m.ListResponse(
        tuple(
            m.VersionInfo(
                e.name,
                e.version,
                e.publisher,
                e.root,
                e.total_bytes,
                e.file_count,
                m.list_meta(metas.get(e.root, {})),
            )
            for e in entries
        )
    )


def manifest_of(
    catalog: Catalog | None, partials: Partials | None, name: str, version: int | None
) -> m.ManifestResponse | m.Error:
    """The manifest of ``name`` (newest, or exactly ``version``): a partial
    wins over the catalog only when it is newer."""
    try:
        validate_name(name)
    except ManifestError:
        return m.Error(m.BAD_REQUEST, "bad checkpoint name")
    entry = catalog.find(name, version, offered=True) if catalog is not None else None
    partial = partials.find(name, version) if partials else None
    if partial is not None and (entry is None or partial.staging.manifest.version > entry.version):
        return m.ManifestResponse(partial.envelope)
    if entry is None:
        what = name if version is None else f"{name}@{version}"
        return m.Error(m.NOT_FOUND, f"no checkpoint {what} is offered here")
    return m.ManifestResponse(entry.envelope)


def in_progress_of(progress: ProgressBook | None, name: str) -> m.ManifestResponse | m.Error:
    """The signed in-progress manifest of ``name`` (issue 21), if this node
    is writing a version of it now."""
    try:
        validate_name(name)
    except ManifestError:
        return m.Error(m.BAD_REQUEST, "bad checkpoint name")
    offered = progress.find(name) if progress is not None else None
    if offered is None:
        return m.Error(m.NOT_FOUND, f"no version of {name} is being written here")
    return m.ManifestResponse(offered.envelope)


def have(
    catalog: Catalog | None,
    partials: Partials | None,
    root: bytes,
    given: Callable[[bytes], int] | None = None,
    fixed: bool = False,
) -> m.Have:
    """Whether the version is held whole (and then, with ``given``, which
    chunks of it peers connected now were given: never empty, so a puller
    tells "none yet" from a server that does not say); if it is being
    pulled, which chunks are verified here and which are being fetched; if
    this host holds a share of a multi-host version, its chunks (and, if
    the peer speaks ``multi-host``: ``fixed``, they will not grow)."""
    if catalog is not None and catalog.by_root(root, whole=True) is not None:
        if given is None:
            return m.Have(root, True)
        bits = given(root)
        return m.Have(root, True, bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little"))
    partial = partials.get(root) if partials else None
    if partial is None:
        share = catalog.by_root(root, offered=True) if catalog is not None else None
        if share is not None and share.selection is not None:
            held = share_bits(root, share.envelope, share.selection)
            return m.Have(root, False, held, b"", fixed)
        return m.Have(root, False)
    return m.Have(root, False, partial.bitfield(), partial.fetching_bitfield())


def share_bits(root: bytes, envelope: bytes, selection: str) -> bytes:
    """The Have bitfield of a share: the chunks of its own files (cached:
    pullers ask for it again and again)."""
    from p2pckpt.manifest.manifest import verify
    from p2pckpt.manifest.select import unpack
    from p2pckpt.wire.bitfield import int_to_bitfield

    key = (root, selection)
    held = _share_bits.get(key)
    if held is not None:
        _share_bits.move_to_end(key)
        return held
    manifest = verify(envelope)
    files = unpack(selection) or frozenset()
    bits = 0
    for index, entry, _ in manifest.iter_chunks():
        if entry.path in files:
            bits |= 1 << index
    held = _share_bits[key] = int_to_bitfield(bits, manifest.chunk_count)
    while len(_share_bits) > SHARE_CACHE:
        _share_bits.popitem(last=False)
    return held
