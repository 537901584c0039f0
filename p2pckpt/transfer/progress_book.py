"""In-progress versions this node offers while their files are written (issue 21).

A watched folder's child that is not complete yet, but some of whose files
are (``daemon/completion.finished_files``), is offered as a *signed
in-progress manifest*: the publisher's signature over the finished files,
marked in progress (``manifest.verify_in_progress``). The watcher puts the
newest one per name here and takes it out when the version is published
whole, or its files go away; the server answers ProgressRequest, Have and
chunk requests for it from here (only peers that named "in-progress" ever
ask). Nothing here is in the catalog: it is never listed, never installed,
and gone with the process. Pure: no trio, no I/O.

A newer in-progress manifest (one more shard finished), or the version
published whole (``retire``), does not stop the chunks of the ones before
it from being served: a follower still fetching them finishes instead of
failing and starting over (they are the same files, in the same place; a
file that changed since fails its chunk check, as any). The last
MAX_SUPERSEDED of them are kept for that, until their files go away
(``withdraw``) or the version published from them leaves the catalog
(``drop_unheld``: unpublished, retired, gc). Only the newest one not retired is *offered*
(ProgressRequest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from p2pckpt.manifest.manifest import Manifest


@dataclass(frozen=True)
class InProgress:
    """One offered in-progress manifest and the folder its files live in."""

    manifest: Manifest
    envelope: bytes
    location: Path


MAX_SUPERSEDED: Final = 16  # older in-progress manifests whose chunks are still served


class ProgressBook:
    """The newest in-progress manifest of each name this node is writing."""

    def __init__(self) -> None:
        self._by_name: dict[str, InProgress] = {}
        self._superseded: dict[bytes, InProgress] = {}  # oldest first, still served
        # Counts changes to what is offered; added to the catalog epoch that
        # mDNS announces (``epoch``), so LAN followers look again at once.
        self.generation = 0
        self._published: set[Path] = set()  # locations retired here: published whole

    def offer(self, manifest: Manifest, envelope: bytes, location: Path) -> None:
        assert manifest.in_progress is not None, "only in-progress manifests go here"
        self._supersede(manifest.name)
        self._by_name[manifest.name] = InProgress(manifest, envelope, location)
        self.generation += 1

    def retire(self, name: str, location: Path) -> None:
        """``location``'s version of ``name`` was published whole: stop
        offering it, but keep serving the chunks already offered."""
        held = self._by_name.get(name)
        if held is not None and held.location == location:
            self._supersede(name)
            self._published.add(location)
            self.generation += 1

    def withdraw(self, name: str, location: Path | None = None) -> None:
        """Stop offering and serving ``name`` (only ``location``'s, if given):
        its files went away."""
        held = self._by_name.get(name)
        if held is not None and (location is None or held.location == location):
            del self._by_name[name]
            self.generation += 1
        for root, old in list(self._superseded.items()):
            if old.manifest.name == name and (location is None or old.location == location):
                del self._superseded[root]

    def drop_unheld(self, held: Callable[[Path], bool]) -> int:
        """Stop serving the superseded manifests of versions published from a
        location ``held`` says the catalog no longer serves (unpublished,
        retired, gc): their chunks go when the version's do. Returns how
        many were dropped."""
        gone = {loc for loc in self._published if not held(loc)}
        doomed = [root for root, p in self._superseded.items() if p.location in gone]
        for root in doomed:
            del self._superseded[root]
        self._published -= gone
        return len(doomed)

    def _supersede(self, name: str) -> None:
        held = self._by_name.pop(name, None)
        if held is None:
            return
        self._superseded[held.manifest.root] = held
        while len(self._superseded) > MAX_SUPERSEDED:
            del self._superseded[next(iter(self._superseded))]

    def epoch(self, catalog_epoch: int) -> int:
        """The epoch to announce: it changes when the catalog's does (a
        version published) and when an in-progress offer does (both only
        grow, so their sum changes whenever either does)."""
        return catalog_epoch + self.generation

    def find(self, name: str) -> InProgress | None:
        """The in-progress manifest of ``name`` offered now, if any."""
        return self._by_name.get(name)

    def get(self, root: bytes) -> InProgress | None:
        """The in-progress manifest ``root`` whose chunks are served, if any."""
        held = next((p for p in self._by_name.values() if p.manifest.root == root), None)
        return held if held is not None else self._superseded.get(root)
