"""Versions this process is pulling right now, whose verified chunks it serves.

A pull registers its staging area here once it is open and removes it
before committing; the server answers Have, Manifest and Chunk requests
for those versions from it (issue 5: pullers feed each other). The chunks
are the ones the staging area has verified and written; the server hashes
each again as it reads it, so nothing unverified ever leaves this node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from p2pckpt.store.staging import Staging
from p2pckpt.wire.bitfield import bits_of, int_to_bitfield


@dataclass
class Partial:
    staging: Staging
    envelope: bytes
    fetching: Callable[[], int] = lambda: 0  # chunks being fetched now, as a bitmap
    _bits: tuple[int, bytes] = field(default=(-1, b""))  # (len(done) then, bitfield)

    def bitfield(self) -> bytes:
        """The verified chunks as a wire bitfield, recomputed only after progress."""
        done = set(self.staging.done)  # written by worker threads: take a copy
        if self._bits[0] != len(done):
            count = self.staging.manifest.chunk_count
            self._bits = (len(done), int_to_bitfield(bits_of(done), count))
        return self._bits[1]

    def fetching_bitfield(self) -> bytes:
        return int_to_bitfield(self.fetching(), self.staging.manifest.chunk_count)


class Partials:
    def __init__(self) -> None:
        self._by_root: dict[bytes, Partial] = {}

    def add(
        self, staging: Staging, envelope: bytes, fetching: Callable[[], int] = lambda: 0
    ) -> None:
        self._by_root[staging.manifest.root] = Partial(staging, envelope, fetching)

    def remove(self, root: bytes) -> None:
        self._by_root.pop(root, None)

    def get(self, root: bytes) -> Partial | None:
        return self._by_root.get(root)

    def find(self, name: str, version: int | None) -> Partial | None:
        """The newest partial of ``name`` (or exactly ``version``)."""
        found = [
            p
            for p in self._by_root.values()
            if p.staging.manifest.name == name
            and (version is None or p.staging.manifest.version == version)
        ]
        return max(found, key=lambda p: p.staging.manifest.version, default=None)
