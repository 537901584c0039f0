"""The trust store: which peer keys this node talks to, and what each may do.

Roles describe what the *peer* may do to us:

* ``pull``    — fetch our catalog, manifests and chunks;
* ``publish`` — sign versions we accept when we pull;
* ``push``    — ask us to pull something (used by the daemon).

Stored as a small versioned JSON file, replaced atomically. A lookup is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.errors import ConfigError, NotAuthorized, UnknownPeer
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.store.atomic import write_atomic

ROLES = ("pull", "publish", "push")
TRUST_FILE = "trust.json"
_FORMAT = 1
_MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    peer_id: PeerId
    name: str
    roles: frozenset[str]


class TrustStore:
    """An in-memory view of ``trust.json``; ``save`` persists it atomically."""

    def __init__(self, peers: Iterable[TrustedPeer] = ()) -> None:
        self._peers = {p.peer_id: p for p in peers}

    def __iter__(self) -> Iterator[TrustedPeer]:
        return iter(sorted(self._peers.values(), key=lambda p: (p.name, str(p.peer_id))))

    def get(self, peer_id: PeerId) -> TrustedPeer | None:
        return self._peers.get(peer_id)

    def require(self, peer_id: PeerId, role: str | None = None) -> TrustedPeer:
        """The peer's entry, or UnknownPeer / NotAuthorized."""
        peer = self._peers.get(peer_id)
        if peer is None:
            raise UnknownPeer(f"peer {peer_id.short} is not trusted")
        if role is not None and role not in peer.roles:
            raise NotAuthorized(f"peer {peer.name or peer_id.short} lacks the {role!r} role")
        return peer

    def add(self, peer_id: PeerId, name: str = "", roles: Iterable[str] = ROLES) -> TrustedPeer:
        role_set = frozenset(roles)
        unknown = role_set - set(ROLES)
        if unknown or not role_set:
            raise ConfigError(f"roles must be among {', '.join(ROLES)}")
        if len(name) > _MAX_NAME or not name.isprintable():
            raise ConfigError("a peer name is up to 64 printable characters")
        peer = TrustedPeer(peer_id, name, role_set)
        self._peers[peer_id] = peer
        return peer

    def resolve(self, text: str) -> PeerId:
        """A peer ID, or the name of a trusted peer."""
        named = [p.peer_id for p in self._peers.values() if p.name and p.name == text]
        if len(named) == 1:
            return named[0]
        return PeerId.parse(text)

    def remove(self, peer_id: PeerId) -> None:
        if self._peers.pop(peer_id, None) is None:
            raise ConfigError(f"peer {peer_id.short} is not in the trust store")

    @classmethod
    def load(cls, home: Path) -> TrustStore:
        path = home / TRUST_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if (
            not isinstance(doc, dict)
            or doc.get("format") != _FORMAT
            or not isinstance(doc.get("peers", []), list)
        ):
            raise ConfigError(f"{path}: unknown trust store format")
        store = cls()
        for entry in doc.get("peers", []):
            try:
                store.add(PeerId.parse(entry["id"]), entry.get("name", ""), entry["roles"])
            except (KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: malformed entry") from exc
        return store

    def save(self, home: Path) -> None:
        doc = {
            "format": _FORMAT,
            "peers": [
                {"id": str(p.peer_id), "name": p.name, "roles": sorted(p.roles)} for p in self
            ],
        }
        write_atomic(home / TRUST_FILE, (json.dumps(doc, indent=2) + "\n").encode(), 0o600)
