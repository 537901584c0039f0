"""The catalog: which versions this node holds and where their bytes live.

One SQLite file (WAL) per home. A row is a verified, signed manifest plus the
local root of its bytes: the original file or directory for a published
version (served in place, no second copy), the destination for a pulled one.
``highest`` remembers the newest version ever accepted per (publisher, name),
so "latest" never goes backwards (rollback protection). ``retired`` lists
published locations taken out of the catalog by retention (``[[watch]]
keep``), so a watcher never publishes them again (``unpublish`` adds to it too).
``stamps`` records each file's size and mtime when a copy was catalogued, so
``gc`` can tell cheaply (no hashing) a copy whose bytes are gone or changed.

A pulled copy may hold only some of a version's files (a selective pull,
issue 19): a row of ``partial_copies`` lists them (none: every file). Such a
copy is catalogued (verify, reuse, a later pull of the rest) and indexes
only its own chunks, but it is never offered to peers as the version
(``find(whole=True)``, ``whole_versions``); a whole copy pulled later takes
its place as the one served. The selection lives in a table of its own, not
in a column of ``versions``/``copies``, because 0.1.0 inserts into those by
position: a home used by this release stays writable by 0.1.0 (issue 20),
and triggers drop the mark of a row 0.1.0 (which knows only whole copies)
writes again.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack

from p2pckpt.errors import ManifestError, NoSpace, Rollback, StoreError
from p2pckpt.manifest.chunker import Chunk
from p2pckpt.manifest.manifest import Manifest, verify
from p2pckpt.manifest.select import Selection, pack, unpack
from p2pckpt.store.locations import file_path

CATALOG_FILE = "catalog.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    root        BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    publisher   BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    location    TEXT NOT NULL,
    origin      TEXT NOT NULL CHECK (origin IN ('published', 'pulled')),
    total_bytes INTEGER NOT NULL,
    file_count  INTEGER NOT NULL,
    added       INTEGER NOT NULL,
    UNIQUE (publisher, name, version)
);
CREATE INDEX IF NOT EXISTS versions_by_name ON versions (name, version);
CREATE TABLE IF NOT EXISTS highest (
    publisher BLOB NOT NULL,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (publisher, name)
);
CREATE TABLE IF NOT EXISTS retired (
    location TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO state VALUES ('epoch', 0);
CREATE TABLE IF NOT EXISTS chunks (
    digest BLOB NOT NULL,
    root   BLOB NOT NULL,
    file   TEXT NOT NULL,
    pos    INTEGER NOT NULL,
    len    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_digest ON chunks (digest);
CREATE INDEX IF NOT EXISTS chunks_by_root ON chunks (root);
CREATE TRIGGER IF NOT EXISTS chunks_go_with_versions AFTER DELETE ON versions
BEGIN DELETE FROM chunks WHERE root = old.root; END;
CREATE TABLE IF NOT EXISTS meta (
    root  BLOB PRIMARY KEY,
    pairs BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS meta_goes_with_versions AFTER DELETE ON versions
BEGIN DELETE FROM meta WHERE root = old.root; END;
CREATE TABLE IF NOT EXISTS copies (
    root     BLOB NOT NULL,
    location TEXT NOT NULL,
    added    INTEGER NOT NULL,
    PRIMARY KEY (root, location)
);
CREATE TABLE IF NOT EXISTS partial_copies (
    p_root     BLOB NOT NULL,
    p_location TEXT NOT NULL,
    selection  TEXT NOT NULL,
    PRIMARY KEY (p_root, p_location)
);
CREATE TRIGGER IF NOT EXISTS whole_unless_marked_v AFTER INSERT ON versions
BEGIN DELETE FROM partial_copies WHERE p_root = new.root AND p_location = new.location; END;
CREATE TRIGGER IF NOT EXISTS whole_unless_marked_c AFTER INSERT ON copies
BEGIN DELETE FROM partial_copies WHERE p_root = new.root AND p_location = new.location; END;
CREATE INDEX IF NOT EXISTS copies_by_location ON copies (location);
CREATE TRIGGER IF NOT EXISTS copies_go_with_versions AFTER DELETE ON versions
BEGIN DELETE FROM copies WHERE root = old.root; END;
CREATE TABLE IF NOT EXISTS stamps (
    root     BLOB NOT NULL,
    location TEXT NOT NULL,
    file     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (root, location, file)
);
CREATE TRIGGER IF NOT EXISTS stamps_go_with_versions AFTER DELETE ON versions
BEGIN DELETE FROM stamps WHERE root = old.root; END;
CREATE TABLE IF NOT EXISTS hashed (
    path      TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ino       INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    chunks    BLOB NOT NULL
);
"""
# A file modified less than this before we hashed it may have been modified
# again within the same timestamp tick: its hashes are not reused ("racily clean").
RACY_NS = 2_000_000_000
# 2: the chunk index; 3: the meta table (both filled from existing versions on upgrade)
_SCHEMA_VERSION = 3
_LOOKUP_BATCH = 500
_COPIES_SQL = (
    "SELECT c.digest, c.file, c.pos, c.len, v.origin FROM chunks c JOIN versions v"
    " ON v.root = c.root"
    " WHERE c.digest IN ({marks}) ORDER BY v.added DESC"
)
# A row's selection (NULL: a whole copy), from partial_copies.
_SEL_V = (
    "(SELECT selection FROM partial_copies"
    " WHERE p_root = versions.root AND p_location = versions.location)"
)
_SELECT = (
    "SELECT root, name, version, publisher, envelope, location, origin, total_bytes,"
    " file_count, added, (SELECT selection FROM partial_copies"
    " WHERE p_root = versions.root AND p_location = versions.location) FROM versions "
)
_WHOLE = _SEL_V + " IS NULL"  # a copy of every file: what peers may be offered
# ... or this host's share of a multi-host version (issue 21 item 2): published
# here, holding only this host's files, offered with a Have listing them.
_OFFERED = f"({_WHOLE} OR origin = 'published')"
_SUMMARIES = (
    "SELECT root, name, version, publisher, x'', location, origin, total_bytes,"
    " file_count, added, (SELECT selection FROM partial_copies"
    " WHERE p_root = versions.root AND p_location = versions.location) FROM versions"
    " ORDER BY name, version"
)
_COPIES_OF = (
    "SELECT location, (SELECT selection FROM partial_copies"
    " WHERE p_root = copies.root AND p_location = copies.location) AS sel FROM copies"
    " WHERE root = ?"
)
_COPIES_AT = (
    "SELECT root, (SELECT selection FROM partial_copies"
    " WHERE p_root = copies.root AND p_location = copies.location) FROM copies"
    " WHERE location = ?"
)
_BEST_COPY = _COPIES_OF + " ORDER BY sel IS NULL DESC, added DESC LIMIT 1"  # whole ones first


def _pack_meta(meta: Mapping[str, str]) -> bytes:
    return bytes(msgpack.packb(sorted(meta.items())))


@dataclass(frozen=True, slots=True)
class Entry:
    """A catalog row, with the manifest decoded lazily by ``manifest()``."""

    root: bytes
    name: str
    version: int
    publisher: bytes
    envelope: bytes
    location: str
    origin: str
    total_bytes: int
    file_count: int
    added: int
    selection: str | None = None  # a partial copy's files (``select.pack``); None: all

    def manifest(self) -> Manifest:
        return verify(self.envelope)

    @property
    def selected(self) -> Selection:
        """The files this copy holds (None: every file)."""
        return unpack(self.selection)


def _no_room(exc: sqlite3.Error, path: Path) -> bool:
    """SQLITE_FULL, or an I/O error (SQLite hides the errno) on a filesystem
    with no free byte or inode left."""
    code = getattr(exc, "sqlite_errorcode", 0)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return False
    return fs.f_bavail == 0 or fs.f_favail == 0


class Catalog:
    """Thin typed access to the catalog database."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if self._db.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute("DELETE FROM chunks")
                    for entry in self._rows(""):
                        self._index(entry.manifest(), entry.location, entry.selected)
                        self._db.execute(
                            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (entry.root, _pack_meta(entry.manifest().meta)),
                        )
                    self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            if _no_room(exc, path):  # exit 10, as for any full disk
                raise NoSpace(
                    f"cannot open catalog {path}: {exc}, its filesystem is full: free some"
                    " space and run the same command again"
                ) from exc
            raise StoreError(f"cannot open catalog {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _mark(self, root: bytes, location: str, packed: str | None) -> None:
        """Record which files the copy at ``location`` holds (None: all)."""
        if packed is None:
            self._db.execute(
                "DELETE FROM partial_copies WHERE p_root = ? AND p_location = ?", (root, location)
            )
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO partial_copies VALUES (?,?,?)", (root, location, packed)
            )

    def _rows(self, where: str, args: tuple[object, ...] = ()) -> list[Entry]:
        """Rows matching a constant ``where`` clause with bound ``args``."""
        sql = _SELECT + where
        cur = self._db.execute(sql, args)
        return [Entry(*row) for row in cur.fetchall()]

    def add(
        self,
        manifest: Manifest,
        envelope: bytes,
        location: Path,
        origin: str,
        selection: Selection = None,
    ) -> None:
        """Record a verified version (a pulled copy of only ``selection``'s
        files, if given); raises if the same (publisher, name, version)
        already names different content."""
        packed = pack(selection)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            clash = self._rows(
                "WHERE publisher = ? AND name = ? AND version = ?",
                (manifest.publisher.key, manifest.name, manifest.version),
            )
            if clash and clash[0].root != manifest.root:
                raise ManifestError(
                    f"{manifest.publisher.short} signed two different {manifest.name}"
                    f"@{manifest.version}; refusing the second"
                )
            here = clash[0] if clash else None
            if here is not None and not os.path.lexists(here.location):
                here = None  # the copy served from is gone: this one takes its place
            # a whole copy takes the place of a partial one (issue 19)
            takes_over = here is not None and here.selection is not None and packed is None
            if (
                here is not None
                and here.location != str(location)
                and origin == "pulled"
                and not takes_over
            ):
                # Another copy of a version held already (issue 18): the first
                # stays the one served and indexed; this one is catalogued too.
                self._db.execute(
                    "INSERT OR REPLACE INTO copies (root, location, added) VALUES (?,?,?)",
                    (manifest.root, str(location), int(time.time())),
                )
                self._mark(manifest.root, str(location), packed)
                self._stamp(manifest, str(location))
                self._bump_highest(manifest)
                self._bump_epoch()
                return
            if here is not None and here.location != str(location) and here.origin == "pulled":
                # published (or pulled whole) here now: the pulled copy stays
                # catalogued beside it
                self._db.execute(
                    "INSERT OR REPLACE INTO copies (root, location, added) VALUES (?,?,?)",
                    (manifest.root, here.location, int(time.time())),
                )
                self._mark(manifest.root, here.location, here.selection)
            self._db.execute(
                "DELETE FROM copies WHERE root = ? AND location = ?",
                (manifest.root, str(location)),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO versions (root, name, version, publisher, envelope,"
                " location, origin, total_bytes, file_count, added)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    manifest.root,
                    manifest.name,
                    manifest.version,
                    manifest.publisher.key,
                    envelope,
                    str(location),
                    origin,
                    manifest.total_bytes,
                    len(manifest.files),
                    int(time.time()),
                ),
            )
            self._mark(manifest.root, str(location), packed)
            self._index(manifest, str(location), selection)
            self._stamp(manifest, str(location))
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (manifest.root, _pack_meta(manifest.meta)),
            )
            self._bump_highest(manifest)
            self._bump_epoch()

    def _stamp(self, manifest: Manifest, location: str) -> None:
        """Record each file's (size, mtime) of the copy at ``location`` as it
        is now, for ``gc``; a file that cannot be stat-ed gets no stamp."""
        self._db.execute(
            "DELETE FROM stamps WHERE root = ? AND location = ?", (manifest.root, location)
        )
        rows = []
        for f in manifest.files:
            try:
                st = os.stat(file_path(Path(location), manifest.kind, f.path))
            except OSError:
                continue
            rows.append((manifest.root, location, f.path, st.st_size, st.st_mtime_ns))
        self._db.executemany("INSERT INTO stamps VALUES (?,?,?,?,?)", rows)

    def stamps(self, root: bytes, location: str) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) per file of the copy at ``location`` when catalogued
        (empty for a copy catalogued before stamps were kept)."""
        cur = self._db.execute(
            "SELECT file, size, mtime_ns FROM stamps WHERE root = ? AND location = ?",
            (root, location),
        )
        return {file: (size, mtime) for file, size, mtime in cur.fetchall()}

    def copy_locations(self, root: bytes) -> list[tuple[str, Selection]]:
        """The other catalogued copies of a version (besides the one served),
        each with the files it holds (None: all)."""
        cur = self._db.execute(_COPIES_OF + " ORDER BY added DESC", (root,))
        return [(row[0], unpack(row[1])) for row in cur.fetchall()]

    def _index(self, manifest: Manifest, location: str, selection: Selection = None) -> None:
        """Record where each chunk of a version lives locally (for reuse):
        of a partial copy, only the chunks of its files."""
        self._db.execute("DELETE FROM chunks WHERE root = ?", (manifest.root,))
        base = Path(location)
        where = {f.path: str(file_path(base, manifest.kind, f.path)) for f in manifest.files}
        self._db.executemany(
            "INSERT INTO chunks VALUES (?,?,?,?,?)",
            (
                (
                    chunk.digest,
                    manifest.root,
                    where[entry.path],
                    chunk.offset,
                    chunk.length,
                )
                for _, entry, chunk in manifest.iter_chunks()
                if selection is None or entry.path in selection
            ),
        )

    def copies(self, digests: Iterable[bytes]) -> dict[bytes, list[tuple[str, int, int, bool]]]:
        """Where chunks with these hashes may be read locally: ``(file,
        offset, length, pulled)`` per catalogued copy, newest version first
        (``pulled``: a copy p2pckpt made, not a publisher's original). Only a
        hint: the file may have changed since, so every read is verified."""
        wanted = list(dict.fromkeys(digests))
        found: dict[bytes, list[tuple[str, int, int, bool]]] = {}
        for i in range(0, len(wanted), _LOOKUP_BATCH):
            batch = wanted[i : i + _LOOKUP_BATCH]
            marks = ",".join("?" * len(batch))  # only placeholders go into the SQL
            sql = _COPIES_SQL.format(marks=marks)
            cur = self._db.execute(sql, batch)
            for digest, file, pos, length, origin in cur.fetchall():
                found.setdefault(digest, []).append((file, pos, length, origin == "pulled"))
        return found

    def _bump_epoch(self) -> None:
        self._db.execute("UPDATE state SET value = value + 1 WHERE key = 'epoch'")

    def epoch(self) -> int:
        """A number that changes whenever the set of versions held changes
        (announced over mDNS so peers know when to look again)."""
        return int(self._db.execute("SELECT value FROM state WHERE key = 'epoch'").fetchone()[0])

    def _bump_highest(self, manifest: Manifest) -> None:
        self._db.execute(
            "INSERT INTO highest VALUES (?,?,?) ON CONFLICT (publisher, name)"
            " DO UPDATE SET version = max(version, excluded.version)",
            (manifest.publisher.key, manifest.name, manifest.version),
        )

    def check_not_rollback(self, manifest: Manifest, asked_latest: bool) -> None:
        """Refuse an older version offered as "latest" for this publisher and name."""
        row = self._db.execute(
            "SELECT version FROM highest WHERE publisher = ? AND name = ?",
            (manifest.publisher.key, manifest.name),
        ).fetchone()
        if asked_latest and row is not None and manifest.version < row[0]:
            raise Rollback(
                f"peer offers {manifest.name}@{manifest.version} as newest,"
                f" but version {row[0]} was already seen: refusing rollback"
            )

    def note_seen(self, manifest: Manifest) -> None:
        """Remember that a valid signed version exists (before it is fully pulled)."""
        with self._db:
            self._bump_highest(manifest)

    def all(self) -> list[Entry]:
        return self._rows("ORDER BY name, version")

    def summaries(self) -> list[Entry]:
        """Every version without its envelope (cheap: for listings)."""
        cur = self._db.execute(_SUMMARIES)
        return [Entry(*row) for row in cur.fetchall()]

    def whole_versions(self) -> list[Entry]:
        """``summaries`` of the versions held whole: what peers are offered."""
        return [e for e in self.summaries() if e.selection is None]

    def metas(self) -> dict[bytes, dict[str, str]]:
        """Each version's manifest meta by root, without decoding manifests."""
        rows = self._db.execute("SELECT root, pairs FROM meta").fetchall()
        return {root: dict(msgpack.unpackb(pairs)) for root, pairs in rows}

    def by_root(self, root: bytes, whole: bool = False, offered: bool = False) -> Entry | None:
        """The version ``root``; with ``whole``, only if held whole (to serve
        it); with ``offered``, also this host's share of a multi-host version."""
        cond = f" AND {_WHOLE}" if whole else f" AND {_OFFERED}" if offered else ""
        rows = self._rows("WHERE root = ?" + cond, (root,))
        return rows[0] if rows else None

    def offered_versions(self) -> list[Entry]:
        """``summaries`` of what peers are offered: versions held whole, and
        this host's shares of multi-host versions (``selection`` set)."""
        return [e for e in self.summaries() if e.selection is None or e.origin == "published"]

    def find(
        self,
        name: str,
        version: int | None,
        publisher: bytes | None = None,
        whole: bool = False,
        offered: bool = False,
    ) -> Entry | None:
        """The newest version of ``name`` (or exactly ``version``) held here,
        optionally only from ``publisher``, or only if held whole (``whole``:
        what may be pushed to peers) or offered (``offered``: also a share of
        a multi-host version)."""
        cond = f" AND {_WHOLE}" if whole else f" AND {_OFFERED}" if offered else ""
        where = "WHERE name = ?" + cond
        args: tuple[object, ...] = (name,)
        if version is not None:
            where += " AND version = ?"
            args += (version,)
        if publisher is not None:
            where += " AND publisher = ?"
            args += (publisher,)
        rows = self._rows(where + " ORDER BY version DESC, added DESC LIMIT 1", args)
        return rows[0] if rows else None

    def next_version(self, name: str) -> int:
        """One past the newest version of ``name`` ever held or seen (a number
        is never reused, even after retention dropped its version)."""
        row = self._db.execute(
            "SELECT max(v) FROM (SELECT max(version) AS v FROM versions WHERE name = ?"
            " UNION ALL SELECT max(version) FROM highest WHERE name = ?)",
            (name, name),
        )
        top = row.fetchone()[0]
        return 1 if top is None else int(top) + 1

    def roots_under(self, location: Path) -> set[bytes]:
        """Roots of versions with a copy stored at or under ``location``."""
        prefix = str(location).rstrip("/") + "/"
        args = (str(location), len(prefix), prefix)
        cur = self._db.execute(
            "SELECT root FROM versions WHERE location = ? OR substr(location, 1, ?) = ?"
            " UNION SELECT root FROM copies WHERE location = ? OR substr(location, 1, ?) = ?",
            args + args,
        )
        return {row[0] for row in cur.fetchall()}

    def hashed_chunks(self, path: str, stat: tuple[int, int, int, int]) -> tuple[Chunk, ...] | None:
        """The chunks of ``path`` from its last publish, if its (size, mtime,
        inode, ctime) are unchanged since (fast republish)."""
        row = self._db.execute(
            "SELECT chunks FROM hashed WHERE path = ? AND size = ? AND mtime_ns = ?"
            " AND ino = ? AND ctime_ns = ?",
            (path, *stat),
        ).fetchone()
        if row is None:
            return None
        try:
            return tuple(Chunk(o, n, d) for o, n, d in msgpack.unpackb(row[0]))
        except (ValueError, TypeError, msgpack.UnpackException):
            return None  # a damaged cache entry just means hashing again

    def remember_hashed(
        self,
        path: str,
        stat: tuple[int, int, int, int],
        started_ns: int,
        chunks: tuple[Chunk, ...],
    ) -> None:
        """Keep a file's chunks for the next publish, unless it was modified
        too shortly before we read it to trust its timestamp."""
        with self._db:
            if max(stat[1], stat[3]) > started_ns - RACY_NS:
                self._db.execute("DELETE FROM hashed WHERE path = ?", (path,))
                return
            blob = msgpack.packb([[c.offset, c.length, c.digest] for c in chunks])
            self._db.execute(
                "INSERT OR REPLACE INTO hashed VALUES (?,?,?,?,?,?)", (path, *stat, blob)
            )

    def at_location(self, location: Path) -> list[Entry]:
        """Versions whose bytes live exactly at ``location``: where they are
        served from, or another pulled copy of them (its row says so)."""
        where = str(location)
        rows = self._rows("WHERE location = ?", (where,))
        for root, selection in self._db.execute(_COPIES_AT, (where,)).fetchall():
            e = self.by_root(root)
            if e is not None:
                rows.append(replace(e, location=where, origin="pulled", selection=selection))
        return rows

    def forget_location(self, location: Path) -> int:
        """Drop pulled copies stored at or under ``location`` (deleted by
        retention, or replaced), so we never offer bytes we no longer have.
        A version served from there with another copy catalogued is served
        from that copy from now on. Returns the versions dropped whole."""
        prefix = str(location).rstrip("/") + "/"
        args = (str(location), len(prefix), prefix)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(
                "DELETE FROM copies WHERE location = ? OR substr(location, 1, ?) = ?", args
            ).rowcount
            dropped = 0
            pulled = "WHERE origin = 'pulled' AND (location = ? OR substr(location, 1, ?) = ?)"
            for entry in self._rows(pulled, args):
                other = self._db.execute(_BEST_COPY, (entry.root,)).fetchone()
                if other is None:
                    self._db.execute("DELETE FROM versions WHERE root = ?", (entry.root,))
                    dropped += 1
                    continue
                self._db.execute(
                    "DELETE FROM copies WHERE root = ? AND location = ?", (entry.root, other[0])
                )
                self._db.execute(  # the copy's mark (if partial) goes with its location
                    "UPDATE versions SET location = ? WHERE root = ?", (other[0], entry.root)
                )
                self._index(entry.manifest(), other[0], unpack(other[1]))
            if gone or dropped:
                self._bump_epoch()
            return dropped

    def forget_publisher(self, publisher: bytes) -> tuple[int, list[Entry]]:
        """Forget what ``publisher`` signed (its key was removed from trust,
        perhaps stolen, R-23): the newest versions seen from it, so a version
        signed at 2^63-1 blocks nothing once the key is gone, and the versions
        we pulled from it, so we stop offering them (their files stay).
        Returns (names whose rollback state was dropped, the dropped rows)."""
        with self._db:
            names = self._db.execute(
                "DELETE FROM highest WHERE publisher = ?", (publisher,)
            ).rowcount
            rows = self._rows("WHERE publisher = ? AND origin = 'pulled'", (publisher,))
            self._db.execute(
                "DELETE FROM versions WHERE publisher = ? AND origin = 'pulled'", (publisher,)
            )
            if rows:
                self._bump_epoch()
        return int(names), rows

    def retire(self, root: bytes) -> None:
        """Stop offering a published version and remember its location, so
        it is not published again; its files are left where they are."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO retired SELECT location, name, version FROM versions"
                " WHERE root = ? AND origin = 'published'",
                (root,),
            )
            if self._db.execute("DELETE FROM versions WHERE root = ?", (root,)).rowcount:
                self._bump_epoch()

    def unpublish(self, name: str, version: int) -> list[Entry]:
        """Stop offering ``name@version`` (every publisher's, every copy): its
        rows leave the catalog, so listings, manifests and chunks no longer
        offer it, and a published location is remembered as retired so a
        watcher does not publish it again. Files are left alone. Returns the
        rows dropped (none: no such version here)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._rows("WHERE name = ? AND version = ?", (name, version))
            self._db.execute(
                "INSERT OR REPLACE INTO retired SELECT location, name, version FROM versions"
                " WHERE name = ? AND version = ? AND origin = 'published'",
                (name, version),
            )
            self._db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
            if rows:
                self._bump_epoch()
        return rows

    def forget_copy(self, root: bytes, location: str) -> bool:
        """Forget one copy of a version (its bytes are gone or changed); if
        it was the copy served, another catalogued copy takes its place, else
        the version is dropped. Returns whether the version was dropped."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM copies WHERE root = ? AND location = ?", (root, location))
            self._db.execute("DELETE FROM stamps WHERE root = ? AND location = ?", (root, location))
            self._bump_epoch()
            rows = self._rows("WHERE root = ?", (root,))
            if not rows or rows[0].location != location:
                return False
            other = self._db.execute(_BEST_COPY, (root,)).fetchone()
            if other is None:
                self._db.execute("DELETE FROM versions WHERE root = ?", (root,))
                return True
            self._db.execute("DELETE FROM copies WHERE root = ? AND location = ?", (root, other[0]))
            self._db.execute(
                "UPDATE versions SET location = ?, origin = 'pulled' WHERE root = ?",
                (other[0], root),
            )
            self._index(rows[0].manifest(), other[0], unpack(other[1]))
            return False

    def retired_locations(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT location FROM retired")}

    def remove(self, root: bytes) -> None:
        with self._db:
            self._db.execute("DELETE FROM versions WHERE root = ?", (root,))
            self._bump_epoch()
