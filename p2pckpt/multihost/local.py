"""Multi-host publish, this host's part: hash, prove, sign, record a share.

The pure gathering (checks, challenge, merge) is ``manifest/gather.py``;
this module does what touches a home and the files: hashing this host's
directory in place (``local_entries``), reading the chunks a challenge
picked (``read_proof``), signing the gathered manifest on the coordinator
(``sign_gathered``) and recording what was signed as this host's *share*
(``record_share``): a catalog row of the version holding exactly this
host's files, at their original location (no copy). A share is served like
a published version, with a Have that lists only its own chunks, so a
puller fetches each file from the host holding it. ``gather_in_process``
runs the whole exchange in one process (the torch transport and tests use
its steps one by one).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from p2pckpt.errors import ConfigError, ManifestError, SourceChanged
from p2pckpt.home import Home
from p2pckpt.manifest.gather import Gather, Pick, check_share, entries_to_wire
from p2pckpt.manifest.manifest import EXPIRES_KEY, FileEntry, Manifest, MetaValue, sign, verify
from p2pckpt.manifest.walk import walk
from p2pckpt.publish import _check_args, _hash_file, check_meta, detect_format, wire_meta


def local_entries(home: Home, path: Path) -> tuple[Path, tuple[FileEntry, ...]]:
    """This host's directory hashed in place (hashes remembered, as any
    publish): its absolute root and its files' entries, paths relative to it."""
    root = path.expanduser().absolute()
    try:
        kind, sources = walk(root)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None
    if kind != "dir":
        raise ConfigError(f"{root}: a multi-host publish takes a directory on each host")
    if not sources:
        raise ConfigError(f"{root}: no files to publish")
    return root, tuple(_hash_file(home, src, None) for src in sources)


def read_proof(root: Path, picks: Sequence[Pick]) -> list[bytes]:
    """The bytes of each picked chunk, from this host's own files (never
    through a link: a path is the one this host hashed)."""
    out: list[bytes] = []
    for relpath, chunk in picks:
        try:
            fd = os.open(root / relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceChanged(f"cannot open {relpath!r}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceChanged(f"{relpath!r} is no longer a regular file")
            out.append(os.pread(fd, chunk.length, chunk.offset))
        finally:
            os.close(fd)
    return out


def gathered_meta(
    meta: Mapping[str, MetaValue] | None, relpaths: Sequence[str], expires: int | None
) -> dict[str, str]:
    """The meta a multi-host manifest carries: the caller's, the format of
    every host's files, the expiry; within the manifest's limits."""
    final = wire_meta(meta)
    fmt = detect_format(list(relpaths))
    if fmt is not None:
        final.setdefault("format", fmt)
    if expires is not None:
        final[EXPIRES_KEY] = str(int(expires))
    check_meta(final, ours=True)
    return final


def sign_gathered(
    home: Home,
    gather: Gather,
    meta: Mapping[str, MetaValue] | None = None,
    expires: int | None = None,
) -> tuple[Manifest, bytes]:
    """The coordinator signs one manifest over every proven host's files
    (refused if this home published other content as that name@version)."""
    _check_args(gather.name, meta, gather.version, expires)
    draft, _ = gather.manifest(home.key.peer_id, int(time.time()), {})
    final = gathered_meta(meta, [f.path for f in draft.files], expires)
    existing = home.catalog.find(gather.name, gather.version, publisher=home.key.peer_id.key)
    if existing is not None:
        old = existing.manifest()
        if old.files == draft.files and dict(old.meta) == final:
            return old, existing.envelope  # the same publish again: no-op
        raise ConfigError(
            f"{gather.name}@{gather.version} is already published with other content;"
            " use a new version"
        )
    return sign(replace(draft, meta=final), home.key)


def record_share(
    home: Home, envelope: bytes, root: Path, mine: Sequence[FileEntry], publisher: bytes
) -> Manifest:
    """Check the signed version this host contributed to and record its
    share: exactly its own files, at ``root``, served in place.

    Raises:
        ManifestError: not signed by ``publisher``, or its entries are not
            in it as this host hashed them.
    """
    manifest = verify(envelope)
    if manifest.publisher.key != publisher:
        raise ManifestError("the gathered version is signed by another key than the coordinator's")
    check_share(manifest, mine)
    home.catalog.add(manifest, envelope, root, "published", frozenset(e.path for e in mine))
    return manifest


def wire_of(entries: Sequence[FileEntry]) -> list[list[object]]:
    """``entries_to_wire``, re-exported for the transports."""
    return entries_to_wire(entries)
