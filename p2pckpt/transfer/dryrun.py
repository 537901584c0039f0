"""``pull --dry-run`` (issue 19): what a pull would do, computed without writing.

The version and its sources are chosen as for a pull (``choose_source``,
without recording the version as seen); DEST is judged as a pull judges it
(``pull.dest_plan``: new, already there, or our own copy updated in place),
with the selection of ``--include``/``--exclude``. Bytes reused are the
chunks a resumable partial copy beside DEST claims (its journal) and those
a catalogued local copy holds (``catalog.copies``, the pull's own reuse
step), counted if the file still has room for them: a hint, as for the
pull, which hashes every chunk it takes. The piece step (chunks an older
copy holds most of) is not estimated: its bytes count as downloaded, so
``bytes_to_download`` is an upper bound. ``disk_needed`` is what the
partial copy would take beyond what is on disk already (files taken whole
from a pulled copy are hard links: no space). Nothing is written: no
staging directory, no catalog row, no DEST.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.home import Home
from p2pckpt.manifest.chunker import Chunk
from p2pckpt.manifest.select import select
from p2pckpt.store import journal_file
from p2pckpt.store.staging import Staging
from p2pckpt.transfer.choose import Offer
from p2pckpt.transfer.pull import dest_plan
from p2pckpt.transfer.reuse import Copies, identical_file


@dataclass(frozen=True)
class PullPlan:
    name: str
    version: int
    publisher: str
    root: str
    dest: str
    present: bool  # DEST holds it (its selection) already: nothing to do
    in_place: bool  # DEST is our copy of another version (or damaged): updated in place
    selection: list[str] | None
    peers: list[dict[str, object]]
    files: list[dict[str, object]]  # each file selected: path, size, download, reuse
    bytes_total: int
    bytes_to_download: int
    bytes_reused: int
    disk_needed: int
    disk_free: int | None


async def plan_pull(
    home: Home,
    offer: Offer,
    dest: Path | None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    into: bool = False,
) -> PullPlan:
    """What pulling ``offer`` into ``dest`` would do (``into``: DEST written
    with a trailing slash). Closes the offer's connections."""
    try:
        manifest, envelope = offer.manifest, offer.envelope
        wanted = select(manifest, include, exclude)
        plan = await dest_plan(home, dest, manifest, wanted, into)
        staging = Staging(plan.dest, manifest, envelope, plan.selection)  # not opened
        entries = staging.files.entries
        chunks = [(i, e.path, c) for i, e, c in manifest.iter_chunks() if i in staging.wanted]
        staged: set[int] = set()
        if plan.there != "present" and staging.belongs_here():
            claimed = journal_file.load(staging.path, manifest.root, manifest.chunk_count)
            staged = (claimed or set()) & staging.wanted
        copies: Copies = {}
        if plan.there != "present":
            copies = home.catalog.copies(c.digest for i, _, c in chunks if i not in staged)
        download: dict[str, int] = {e.path: 0 for e in entries}
        reuse: dict[str, int] = {e.path: 0 for e in entries}
        room: dict[str, int] = {}  # file -> its size now (-1: not a regular file)
        for index, path, chunk in chunks:
            if plan.there == "present" or index in staged or _held(chunk, copies, room):
                reuse[path] += chunk.length
            else:
                download[path] += chunk.length
        on_disk = sum(c.length for i, _, c in chunks if i in staged)
        linked = sum(
            e.size
            for e in entries
            if plan.there != "present"
            and not any(i in staged for i in staging.files.file_chunks[e.path])
            and identical_file(e, copies) is not None
        )
        total = staging.wanted_bytes
        return PullPlan(
            name=manifest.name,
            version=manifest.version,
            publisher=str(manifest.publisher),
            root=manifest.root.hex(),
            dest=str(plan.dest),
            present=plan.there == "present",
            in_place=plan.there == "replace",
            selection=None if plan.selection is None else sorted(plan.selection),
            peers=[{"id": str(s.peer), "route": s.route} for s in offer.sources],
            files=[
                {
                    "path": e.path,
                    "size": e.size,
                    "download": download[e.path],
                    "reuse": reuse[e.path],
                }
                for e in entries
            ],
            bytes_total=total,
            bytes_to_download=sum(download.values()),
            bytes_reused=sum(reuse.values()),
            disk_needed=0 if plan.there == "present" else max(0, total - on_disk - linked),
            disk_free=_free(plan.dest),
        )
    finally:
        await offer.aclose()


def _held(chunk: Chunk, copies: Copies, room: dict[str, int]) -> bool:
    """Some local copy's file still has room for this chunk (the pull reads
    and hashes it; here only its size is looked at)."""
    for file, pos, length, _ in copies.get(chunk.digest, ()):
        if length != chunk.length:
            continue
        if file not in room:
            try:
                st = os.stat(file, follow_symlinks=False)
                room[file] = st.st_size if stat.S_ISREG(st.st_mode) else -1
            except OSError:
                room[file] = -1
        if room[file] >= pos + length:
            return True
    return False


def _free(dest: Path) -> int | None:
    """Free bytes on the filesystem DEST would be on (its nearest existing folder)."""
    here = dest.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None
