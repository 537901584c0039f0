"""``gc``: forget catalog rows whose bytes are gone or changed.

A catalogued copy is only a promise that its bytes are at its location; a
user who deletes or edits a published folder breaks it, and the seeder then
refuses those chunks one by one (R-31). ``gc`` checks every copy cheaply (no
hashing): the location exists, each file exists with its signed size, and
its mtime is the one recorded when the copy was catalogued (``stamps``; a
copy catalogued before stamps were kept is checked by size only). A bad copy
is forgotten; a version with no good copy left leaves the catalog. Files are
never touched, deleted or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from p2pckpt.manifest.manifest import Manifest
from p2pckpt.manifest.select import Selection
from p2pckpt.store.catalog import Catalog
from p2pckpt.store.locations import file_path

_GONE = (FileNotFoundError, NotADirectoryError)


@dataclass(frozen=True, slots=True)
class Bad:
    """One catalogued copy whose bytes are gone or changed."""

    name: str
    version: int
    location: str
    reason: str  # "missing" or "changed"
    path: str  # the file (or location) that showed it
    whole: bool  # the version had no good copy left: it left the catalog

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "location": self.location,
            "reason": self.reason,
            "path": self.path,
            "version_forgotten": self.whole,
        }


@dataclass(slots=True)
class Report:
    checked: int = 0
    bad: list[Bad] = field(default_factory=list)
    dry_run: bool = False

    @property
    def forgotten(self) -> list[Bad]:
        """The versions that left (or would leave) the catalog."""
        return [b for b in self.bad if b.whole]


def check_copy(
    manifest: Manifest,
    location: str,
    stamps: dict[str, tuple[int, int]],
    selected: Selection = None,
) -> tuple[str, str] | None:
    """Why the copy at ``location`` no longer holds the version's bytes (of
    the ``selected`` files, for a partial copy), as (reason, path), or None
    if it looks intact. An unreadable file (a permission problem, an
    unmounted share's I/O error) is not proof of anything: it is kept."""
    base = Path(location)
    if not os.path.lexists(base):
        return "missing", location
    for f in manifest.files:
        if selected is not None and f.path not in selected:
            continue  # never pulled here
        path = file_path(base, manifest.kind, f.path)
        try:
            st = os.stat(path)
        except _GONE:
            return "missing", str(path)
        except OSError:
            continue
        if st.st_size != f.size:
            return "changed", str(path)
        stamp = stamps.get(f.path)
        if stamp is not None and stamp[1] != st.st_mtime_ns:
            return "changed", str(path)
    return None


def collect(catalog: Catalog, *, dry_run: bool = False) -> Report:
    """Check every catalogued copy; forget the bad ones unless ``dry_run``."""
    report = Report(dry_run=dry_run)
    for entry in catalog.all():
        report.checked += 1
        manifest = entry.manifest()
        others = catalog.copy_locations(entry.root)
        found: list[tuple[str, str, str]] = []
        # the served one last: see forget_copy
        for location, selected in [*others, (entry.location, entry.selected)]:
            stamps = catalog.stamps(entry.root, location)
            why = check_copy(manifest, location, stamps, selected)
            if why is not None:
                found.append((location, *why))
        whole = len(found) == len(others) + 1
        for location, reason, path in found:
            report.bad.append(Bad(entry.name, entry.version, location, reason, path, whole))
            if not dry_run:
                catalog.forget_copy(entry.root, location)
    return report
