"""Multi-host publish (issue 21 item 2): one signed version over files on several hosts.

Theory of operation
-------------------

Multi-node training writes each rank's shards to its own node's disk. Each
host hashes its own files in place (``FileEntry``, as any publish) and keeps
serving them; one host, the *coordinator*, holds the publisher key and signs
one manifest covering every host's files. This module is the pure core of
that gathering: no sockets, no torch, no clock. Its transports (a
``torch.distributed`` job's collectives, ``p2pckpt/multihost.py``) only move
the values it takes and gives.

1. **Entries.** Each contributor sends its file entries in ``entries_to_wire``
   form. ``Gather.add`` validates them as untrusted input (types, the
   manifest's limits, safe paths) and refuses a path another host claimed
   already: nothing is merged that a puller would refuse.
2. **Challenge.** Once every contributor is in, the coordinator draws a
   random ``seed``; ``challenge`` picks, per host, the last chunk of each of
   its files (the one that pins the file's claimed size) and PROOF_CHUNKS
   more at random, within PROOF_BYTES per host. A contributor could not know
   the picks before it committed to its entries.
3. **Proof.** Each contributor answers with the picked chunks' bytes
   (``prove``, reading its own files); ``check_proof`` re-hashes them against
   the digests and lengths it claimed. A mismatch refuses that host with a
   ``HostRefused`` naming it and the file, and the publish fails: nothing is
   signed. A host that lies about a file it does not hold is caught for sure
   (its last chunk is always asked while the budget lasts); one that lies
   about a few chunks of a big file only with the odds of the sample. Either
   way no wrong byte can reach a puller: every chunk is verified against the
   signed digests on arrival, so such a lie can only make the version
   unavailable, never wrong.
4. **Sign.** ``manifest`` merges every host's entries into one ``Manifest``
   (kind ``dir``); the caller signs it (``manifest.sign`` runs the same
   checks a puller makes) and hands the envelope back to every contributor,
   which checks with ``check_share`` that its own entries are in it
   unchanged before it records its share (a partial copy of exactly its own
   files, served in place).

States: COLLECTING (``add``) -> CHALLENGED (``challenge``) -> PROVEN (every
``check_proof`` passed) -> ``manifest``. Calls out of order raise
``LocalProtocolError``; after a refusal every later call raises too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import msgpack

from p2pckpt.errors import HostRefused, LocalProtocolError, ManifestError
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import MAX_CHUNK, Chunk, chunk_hash
from p2pckpt.manifest.manifest import (
    MAX_CHUNKS,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    FileEntry,
    Manifest,
)
from p2pckpt.manifest.paths import safe_display, validate_path_set, validate_relpath

MAX_HOSTS: Final = 1024  # hosts in one version: far beyond any training job's nodes
MAX_HOST_LABEL: Final = 128  # characters of a host's label (a peer ID or "rank N")
PROOF_CHUNKS: Final = 4  # random chunks asked of each host beyond its files' last ones
PROOF_BYTES: Final = 64 << 20  # 64 MiB per host at most (beyond its first chunk asked)
SEED_BYTES: Final = 32

WireEntries = list[list[object]]  # [[path, size, [[offset, length, digest], ...]], ...]
Pick = tuple[str, Chunk]  # (path, chunk): one chunk asked as proof


def entries_to_wire(entries: Iterable[FileEntry]) -> WireEntries:
    """File entries as plain lists (msgpack, pickle and JSON-free transports carry them)."""
    return [[e.path, e.size, [[c.offset, c.length, c.digest] for c in e.chunks]] for e in entries]


def pack_entries(entries: Iterable[FileEntry]) -> bytes:
    """Entries as the wire carries them (GatherOffer): msgpack of ``entries_to_wire``."""
    packed: bytes = msgpack.packb(entries_to_wire(entries), use_bin_type=True)
    return packed


def unpack_entries(host: str, blob: bytes) -> object:
    """A GatherOffer's entries, unpacked with a manifest's limits (untrusted;
    ``Gather.add`` checks the rest).

    Raises:
        HostRefused: over a limit, or not msgpack.
    """
    try:
        return msgpack.unpackb(
            blob,
            raw=False,
            strict_map_key=True,
            max_bin_len=64,
            max_str_len=4096,
            max_array_len=max(MAX_CHUNKS, MAX_FILES),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # msgpack raises many types on garbage
        raise HostRefused(host, "malformed file entries: not msgpack within the limits") from None


def _int(v: object, hi: int) -> bool:
    return type(v) is int and 0 <= v <= hi


def parse_entries(host: str, doc: object) -> tuple[FileEntry, ...]:
    """A contributor's entries, checked like a manifest's files (untrusted).

    Raises:
        HostRefused: not a list of well-formed entries within the limits.
    """

    def bad(what: str, path: str = "") -> HostRefused:
        return HostRefused(host, f"malformed file entries: {what}", path)

    if not isinstance(doc, list) or not 0 < len(doc) <= MAX_FILES:
        raise bad(f"a list of 1 to {MAX_FILES} entries")
    out: list[FileEntry] = []
    total = nchunks = 0
    for item in doc:
        if not isinstance(item, list) or len(item) != 3:
            raise bad("an entry is [path, size, chunks]")
        path, size, chunks = item
        if not isinstance(path, str):
            raise bad("a path is a string")
        try:
            validate_relpath(path)
        except ManifestError as exc:
            raise HostRefused(host, str(exc), path) from None
        if not _int(size, MAX_TOTAL_BYTES) or not isinstance(chunks, list):
            raise bad("size or chunks", path)
        total += size
        nchunks += len(chunks)
        if total > MAX_TOTAL_BYTES or nchunks > MAX_CHUNKS:
            raise bad("more bytes or chunks than a manifest holds", path)
        parsed: list[Chunk] = []
        expect = 0
        for c in chunks:
            if not isinstance(c, list) or len(c) != 3:
                raise bad("a chunk is [offset, length, digest]", path)
            off, length, digest = c
            if not (_int(off, MAX_TOTAL_BYTES) and off == expect):
                raise bad("chunk offsets", path)
            if not (_int(length, MAX_CHUNK) and length > 0):
                raise bad("chunk length", path)
            if not isinstance(digest, bytes) or len(digest) != 32:
                raise bad("chunk hash", path)
            parsed.append(Chunk(off, length, digest))
            expect += length
        if expect != size:
            raise bad("chunks do not cover the file", path)
        out.append(FileEntry(path, size, tuple(parsed)))
    try:
        validate_path_set(e.path for e in out)
    except ManifestError as exc:
        raise HostRefused(host, str(exc)) from None
    return tuple(sorted(out, key=lambda e: e.path))


def pick_proof(entries: Sequence[FileEntry], seed: bytes, host: str) -> list[Pick]:
    """The chunks ``host`` must show: each file's last chunk, then
    PROOF_CHUNKS random ones, within PROOF_BYTES (always at least one).
    Deterministic from ``seed`` and ``host``, so both sides could compute it."""
    # Sampling, not secrecy: what counts is that the seed was unknown to the
    # host when it committed to its entries.
    rng = random.Random(seed + host.encode())
    files = sorted((e for e in entries if e.chunks), key=lambda e: e.path)
    rng.shuffle(files)
    picks: list[Pick] = []
    used = 0
    for e in files:
        last = e.chunks[-1]
        if picks and used + last.length > PROOF_BYTES:
            continue
        picks.append((e.path, last))
        used += last.length
    every = [(e.path, c) for e in files for c in e.chunks]
    for _ in range(PROOF_CHUNKS):
        if not every:
            break
        choice = every[rng.randrange(len(every))]
        if choice in picks or used + choice[1].length > PROOF_BYTES:
            continue
        picks.append(choice)
        used += choice[1].length
    return picks


def prove(picks: Sequence[Pick], read: Callable[[str, int, int], bytes]) -> list[bytes]:
    """The contributor's answer: the bytes of each picked chunk, read by
    ``read(path, offset, length)`` from its own files."""
    return [read(path, c.offset, c.length) for path, c in picks]


def check_share(envelope_manifest: Manifest, mine: Sequence[FileEntry]) -> None:
    """A contributor's check of the signed manifest it is given: every one of
    its own entries is in it, unchanged (or it would serve files under a
    version that says something else about them).

    Raises:
        ManifestError: an entry is missing or differs.
    """
    theirs = {e.path: e for e in envelope_manifest.files}
    for e in mine:
        if theirs.get(e.path) != e:
            raise ManifestError(
                f"the signed {envelope_manifest.name}@{envelope_manifest.version} does not"
                f" list {safe_display(e.path)!r} as this host hashed it"
            )


class Gather:
    """The coordinator's side: entries in, a challenge out, proofs in, one manifest out."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        self._hosts: dict[str, tuple[FileEntry, ...]] = {}
        self._owner: dict[str, str] = {}  # path -> host
        self._picks: dict[str, list[Pick]] | None = None
        self._proven: set[str] = set()
        self._failed = False

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    def _state(self, collecting: bool) -> None:
        if self._failed:
            raise LocalProtocolError("this gathering was refused already")
        if collecting != (self._picks is None):
            raise LocalProtocolError("entries come before the challenge, proofs after it")

    def _refuse(self, exc: HostRefused) -> HostRefused:
        self._failed = True
        return exc

    def add(self, host: str, doc: object) -> None:
        """One contributor's entries (``entries_to_wire`` form; untrusted).

        Raises:
            HostRefused: malformed, over a limit, or a path another host holds.
        """
        self._state(collecting=True)
        if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_LABEL:
            raise self._refuse(HostRefused("?", "a host label is 1 to 128 characters"))
        if host in self._hosts:
            raise self._refuse(HostRefused(host, "sent its entries twice"))
        if len(self._hosts) >= MAX_HOSTS:
            raise self._refuse(HostRefused(host, f"more than {MAX_HOSTS} hosts"))
        try:
            entries = parse_entries(host, doc)
        except HostRefused as exc:
            raise self._refuse(exc) from None
        for e in entries:
            other = self._owner.get(e.path)
            if other is not None:
                raise self._refuse(HostRefused(host, f"also claimed by {other}", e.path))
        try:  # the union must be a valid path set too (case folding, file vs dir)
            validate_path_set([*self._owner, *(e.path for e in entries)])
        except ManifestError as exc:
            raise self._refuse(HostRefused(host, str(exc))) from None
        if sum(len(x) for x in self._hosts.values()) + len(entries) > MAX_FILES:
            raise self._refuse(HostRefused(host, f"more than {MAX_FILES} files in all"))
        self._hosts[host] = entries
        for e in entries:
            self._owner[e.path] = host

    def challenge(self, seed: bytes) -> dict[str, list[Pick]]:
        """The chunks each host must show, drawn from ``seed`` (SEED_BYTES of
        randomness the hosts could not know when they sent their entries)."""
        self._state(collecting=True)
        if len(seed) < SEED_BYTES:
            raise LocalProtocolError(f"a challenge seed is at least {SEED_BYTES} bytes")
        if not self._hosts:
            raise LocalProtocolError("no host sent entries")
        self._picks = {h: pick_proof(e, seed, h) for h, e in self._hosts.items()}
        return dict(self._picks)

    def check_proof(self, host: str, answers: object) -> None:
        """A host's proof: the bytes of its picked chunks, in order (untrusted).

        Raises:
            HostRefused: a chunk missing, of another length or another hash.
        """
        picks = self._picks_of(host)
        if not isinstance(answers, list) or len(answers) != len(picks):
            raise self._refuse(HostRefused(host, "did not show the chunks it was asked for"))
        for index, data in enumerate(answers):
            self.check_chunk(host, index, data)
        self.proven(host, len(answers))

    def _picks_of(self, host: str) -> list[Pick]:
        self._state(collecting=False)
        assert self._picks is not None
        picks = self._picks.get(host)
        if picks is None:
            raise LocalProtocolError(f"no challenge was sent to {host}")
        return picks

    def check_chunk(self, host: str, index: int, data: object) -> None:
        """One chunk of a host's proof, as it arrives (so a coordinator holds
        one chunk at a time, not every host's proof at once).

        Raises:
            HostRefused: not the chunk claimed (or no such pick).
        """
        picks = self._picks_of(host)
        if not 0 <= index < len(picks):
            raise self._refuse(HostRefused(host, "showed a chunk it was not asked for"))
        path, chunk = picks[index]
        if not isinstance(data, bytes | bytearray) or len(data) != chunk.length:
            raise self._refuse(
                HostRefused(host, f"chunk at offset {chunk.offset} is not as claimed", path)
            )
        if chunk_hash(data) != chunk.digest:
            raise self._refuse(
                HostRefused(host, f"chunk at offset {chunk.offset} does not match", path)
            )

    def proven(self, host: str, shown: int) -> None:
        """A host showed ``shown`` chunks, each checked: all it was asked for?"""
        if shown != len(self._picks_of(host)):
            raise self._refuse(HostRefused(host, "did not show the chunks it was asked for"))
        self._proven.add(host)

    def manifest(
        self, publisher: PeerId, created: int, meta: Mapping[str, str]
    ) -> tuple[Manifest, dict[str, tuple[FileEntry, ...]]]:
        """One manifest over every host's files (to sign), and each host's entries."""
        if self._failed or self._picks is None or self._proven != set(self._hosts):
            raise LocalProtocolError("every host must prove its entries before signing")
        files = tuple(sorted((e for x in self._hosts.values() for e in x), key=lambda e: e.path))
        manifest = Manifest(
            name=self.name,
            version=self.version,
            publisher=publisher,
            created=created,
            meta=dict(meta),
            kind="dir",
            files=files,
        )
        return manifest, dict(self._hosts)
