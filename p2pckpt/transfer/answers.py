"""The seeder's answers to List, Manifest and Have requests.

Plain functions of what this node holds: the catalog of published (and
pulled) versions, and the versions it is pulling right now (``partials``),
whose verified chunks it already serves (issue 5). A partial newer than
anything in the catalog is offered by Manifest, so pullers can feed each
other. Pure: no trio, no sockets (the catalog is SQLite, read in place);
the server checks the "pull" role before asking.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pckpt.errors import ManifestError, RemoteProtocolError
from p2pckpt.manifest.manifest import validate_name
from p2pckpt.store.catalog import Catalog
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.wire import messages as m

Answer = m.ListResponse | m.ManifestResponse | m.Have | m.Error


def answer(
    req: m.Request,
    catalog: Catalog | None,
    partials: Partials | None = None,
    given: Callable[[bytes], int] | None = None,
    progress: ProgressBook | None = None,
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
            return have(catalog, partials, root, given)
    raise RemoteProtocolError(f"unexpected request {type(req).__name__}")


def list_versions(catalog: Catalog | None) -> m.ListResponse:
    """The newest MAX_LIST_ENTRIES versions held, with their listed metadata."""
    if catalog is None:
        return m.ListResponse(())
    entries = catalog.whole_versions()[-m.MAX_LIST_ENTRIES :]  # never a partial copy
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
    entry = catalog.find(name, version, whole=True) if catalog is not None else None
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
) -> m.Have:
    """Whether the version is held whole (and then, with ``given``, which
    chunks of it peers connected now were given: never empty, so a puller
    tells "none yet" from a server that does not say); if it is being
    pulled, which chunks are verified here and which are being fetched."""
    if catalog is not None and catalog.by_root(root, whole=True) is not None:
        if given is None:
            return m.Have(root, True)
        bits = given(root)
        return m.Have(root, True, bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little"))
    partial = partials.get(root) if partials else None
    if partial is None:
        return m.Have(root, False)
    return m.Have(root, False, partial.bitfield(), partial.fetching_bitfield())
