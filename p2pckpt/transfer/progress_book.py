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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2pckpt.manifest.manifest import Manifest


@dataclass(frozen=True)
class InProgress:
    """One offered in-progress manifest and the folder its files live in."""

    manifest: Manifest
    envelope: bytes
    location: Path


class ProgressBook:
    """The newest in-progress manifest of each name this node is writing."""

    def __init__(self) -> None:
        self._by_name: dict[str, InProgress] = {}

    def offer(self, manifest: Manifest, envelope: bytes, location: Path) -> None:
        assert manifest.in_progress is not None, "only in-progress manifests go here"
        self._by_name[manifest.name] = InProgress(manifest, envelope, location)

    def withdraw(self, name: str, location: Path | None = None) -> None:
        """Stop offering ``name`` (only if it is still ``location``'s)."""
        held = self._by_name.get(name)
        if held is not None and (location is None or held.location == location):
            del self._by_name[name]

    def find(self, name: str) -> InProgress | None:
        return self._by_name.get(name)

    def get(self, root: bytes) -> InProgress | None:
        return next((p for p in self._by_name.values() if p.manifest.root == root), None)
