"""The trust store: which peer keys this node talks to, and what each may do.

Roles describe what the *peer* may do here, to us (least privilege, R-64:
a peer added without ``--role`` may only pull):

* ``pull``    — fetch our catalog, manifests and chunks;
* ``publish`` — sign versions we accept when we pull or follow;
* ``push``    — ask us to pull something (used by the daemon).

Stored as a small versioned JSON file, replaced atomically. ``TrustStore``
is a pure value; ``TrustFile`` is the one owner of the file in a running
node: every lookup sees the file as it is on disk now (one ``stat``), so a
``trust rm`` in another process reaches the server, followers, pushes, the
finder and replicas at once (R-63). ``publisher_problem`` is the one rule
for whose signatures a pull installs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.errors import ConfigError, NotAuthorized, UnknownPeer
from p2pckpt.fs.atomic import write_atomic
from p2pckpt.identity.peer_id import PeerId

log = logging.getLogger("p2pckpt.trust")

ROLES = ("pull", "publish", "push")
DEFAULT_ROLES = ("pull",)
ROLE_WORDS = {
    "pull": "may pull from us",
    "publish": "versions it signs are accepted",
    "push": "may ask us to pull",
}
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

    def add(
        self,
        peer_id: PeerId,
        name: str = "",
        roles: Iterable[str] = DEFAULT_ROLES,
        *,
        unique_name: bool = True,
    ) -> TrustedPeer:
        """Trust ``peer_id`` (replacing its entry). A name names one peer: one
        already given to another peer is refused (``unique_name=False`` only
        for reading a file written before that rule)."""
        role_set = frozenset(roles)
        unknown = role_set - set(ROLES)
        if unknown or not role_set:
            raise ConfigError(f"roles must be among {', '.join(ROLES)}")
        if len(name) > _MAX_NAME or not name.isprintable():
            raise ConfigError("a peer name is up to 64 printable characters")
        if name and unique_name:
            taken = [p for p in self._peers.values() if p.name == name and p.peer_id != peer_id]
            if taken:
                raise ConfigError(
                    f"the name {name!r} is already given to {taken[0].peer_id}: pick another"
                    " name, or 'p2pckpt trust rm' that peer first"
                )
        peer = TrustedPeer(peer_id, name, role_set)
        self._peers[peer_id] = peer
        return peer

    def resolve(self, text: str) -> PeerId:
        """A peer ID, or the name of a trusted peer."""
        named = [p.peer_id for p in self._peers.values() if p.name and p.name == text]
        if len(named) == 1:
            return named[0]
        if named:
            raise ConfigError(
                f"{len(named)} trusted peers are named {text!r}: use a peer ID (p2pckpt trust ls)"
            )
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
                store.add(
                    PeerId.parse(entry["id"]),
                    entry.get("name", ""),
                    entry["roles"],
                    unique_name=False,
                )
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


_Stamp = tuple[int, int, int, int] | None


class TrustFile:
    """The one owner of ``HOME/trust.json`` in a process.

    ``current()`` stats the file on every call and re-reads it when it was
    replaced or changed, so no part of a running node can hold a stale
    view. ``generation`` grows with every change seen, which is how the
    server knows to re-check connections it authorised earlier. A file
    that no longer parses fails closed: nobody is trusted until it is fixed
    (a revocation must never be lost to a typo).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / TRUST_FILE
        self.generation = 0
        self._stamp = self._stat()
        self._store = TrustStore.load(home)  # at start, a bad file is an error

    def _stat(self) -> _Stamp:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def current(self) -> TrustStore:
        """The trust store as the file holds it now."""
        try:
            stamp = self._stat()
        except ConfigError as exc:
            stamp = (-1, -1, -1, -1)
            problem: ConfigError | None = exc
        else:
            problem = None
        if stamp == self._stamp:
            return self._store
        if problem is None:
            try:
                store = TrustStore.load(self.home)
            except ConfigError as exc:
                problem = exc
        if problem is not None:
            log.error(
                'trust store unreadable, trusting nobody until it is fixed error="%s"', problem
            )
            store = TrustStore()
        else:
            log.info("trust store changed peers=%d", len(list(store)))
        self._store, self._stamp = store, stamp
        self.generation += 1
        return store

    def save(self, store: TrustStore) -> None:
        """Persist ``store`` (atomically) and make it the current view."""
        store.save(self.home)
        self._store, self._stamp = store, self._stat()
        self.generation += 1


def publisher_problem(
    trust: TrustStore, me: PeerId, publisher: PeerId, named: Sequence[str] = ()
) -> str | None:
    """Why versions signed by ``publisher`` may not be installed here, or None.

    With ``named`` (a follow's ``publishers``, a pull's ``--publisher``: IDs
    or trusted names), only those publishers count, and each must still be
    in the trust store; without, every peer holding ``publish`` does, and
    this node itself (R-64). Names resolve against ``trust`` as it is now.
    """
    if named:
        allowed = set()
        for text in named:
            try:
                allowed.add(trust.resolve(text))
            except ConfigError:
                continue  # a name nobody has (any more): it allows nobody
        if publisher in allowed and (publisher == me or trust.get(publisher) is not None):
            return None
        return f"not one of the publishers asked for ({', '.join(named)})"
    if publisher == me:
        return None
    known = trust.get(publisher)
    if known is None:
        return "not a publisher we trust"
    if "publish" not in known.roles:
        who = known.name or publisher.short
        return (
            f"{who} is trusted here, but not with the 'publish' role"
            f" (p2pckpt trust add {publisher} --role publish ...)"
        )
    return None
