"""Tests for p2pckpt.identity.trust: the trust store, roles and its file."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from p2pckpt.errors import ConfigError, NotAuthorized, TrustError, UnknownPeer
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.identity.trust import ROLES, TRUST_FILE, TrustedPeer, TrustStore

ALICE = PeerId(bytes(range(32)))
BOB = PeerId(bytes(range(1, 33)))
CAROL = PeerId(bytes(range(2, 34)))


def test_add_and_require() -> None:
    """An added peer is returned by require, with every role by default."""
    store = TrustStore()
    added = store.add(ALICE, "alice")
    assert added == TrustedPeer(ALICE, "alice", frozenset(ROLES))
    assert store.require(ALICE) == added
    for role in ROLES:
        assert store.require(ALICE, role) == added
    assert store.get(ALICE) == added
    assert store.get(BOB) is None


def test_unknown_peer() -> None:
    """A peer not in the store raises UnknownPeer, whatever role is asked for."""
    store = TrustStore()
    store.add(ALICE)
    with pytest.raises(UnknownPeer):
        store.require(BOB)
    with pytest.raises(UnknownPeer):
        store.require(BOB, "pull")


def test_missing_role_is_not_authorized() -> None:
    """A known peer without the role raises NotAuthorized, not UnknownPeer."""
    store = TrustStore()
    store.add(ALICE, "alice", roles=["pull"])
    assert store.require(ALICE, "pull").roles == {"pull"}
    for role in ("publish", "push"):
        with pytest.raises(NotAuthorized) as info:
            store.require(ALICE, role)
        assert not isinstance(info.value, UnknownPeer)
        assert isinstance(info.value, TrustError)


def test_add_replaces_existing_entry() -> None:
    """Adding a peer again replaces its name and roles."""
    store = TrustStore()
    store.add(ALICE, "old", roles=["push"])
    store.add(ALICE, "new", roles=["pull", "publish"])
    assert store.require(ALICE) == TrustedPeer(ALICE, "new", frozenset({"pull", "publish"}))
    assert len(list(store)) == 1


def test_remove() -> None:
    """A removed peer is unknown; removing an absent peer is a ConfigError."""
    store = TrustStore()
    store.add(ALICE)
    store.remove(ALICE)
    with pytest.raises(UnknownPeer):
        store.require(ALICE)
    with pytest.raises(ConfigError):
        store.remove(ALICE)


@pytest.mark.parametrize("roles", [[], ["admin"], ["pull", "root"], "pull"])
def test_bad_roles_rejected(roles: Any) -> None:
    """Roles must be a non-empty subset of pull, publish and push."""
    store = TrustStore()
    with pytest.raises(ConfigError):
        store.add(ALICE, roles=roles)
    assert store.get(ALICE) is None


@pytest.mark.parametrize("name", ["x" * 65, "bad\nname", "esc\x1b[31m"])
def test_bad_names_rejected(name: str) -> None:
    """A peer name is up to 64 printable characters."""
    with pytest.raises(ConfigError):
        TrustStore().add(ALICE, name)


def test_iteration_is_sorted_by_name() -> None:
    """Iterating the store lists peers by name, then ID."""
    store = TrustStore()
    store.add(BOB, "bob")
    store.add(CAROL, "")
    store.add(ALICE, "alice")
    assert [p.name for p in store] == ["", "alice", "bob"]


def test_save_load_round_trip(tmp_path: Path) -> None:
    """Saving then loading gives the same peers, names and roles, in a 0600 file."""
    store = TrustStore()
    store.add(ALICE, "alice", roles=["pull"])
    store.add(BOB, "bob ✓", roles=["publish", "push"])
    store.save(tmp_path)
    path = tmp_path / TRUST_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = TrustStore.load(tmp_path)
    assert list(loaded) == list(store)
    assert [p.name for p in tmp_path.iterdir()] == [TRUST_FILE]  # no temporary left over


def test_save_replaces_and_keeps_mode(tmp_path: Path) -> None:
    """Saving over an existing file replaces it and leaves it owner-only."""
    path = tmp_path / TRUST_FILE
    path.write_text("{}")
    path.chmod(0o644)
    store = TrustStore()
    store.add(ALICE)
    store.save(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.peer_id for p in TrustStore.load(tmp_path)] == [ALICE]


def test_saved_file_is_versioned_json(tmp_path: Path) -> None:
    """The file is JSON with a format number and printed peer IDs."""
    store = TrustStore()
    store.add(ALICE, "alice", roles=["push", "pull"])
    store.save(tmp_path)
    doc = json.loads((tmp_path / TRUST_FILE).read_text())
    assert doc == {
        "format": 1,
        "peers": [{"id": str(ALICE), "name": "alice", "roles": ["pull", "push"]}],
    }


def test_missing_file_is_empty_store(tmp_path: Path) -> None:
    """Loading from a home without a trust file gives an empty store."""
    assert list(TrustStore.load(tmp_path)) == []


@pytest.mark.parametrize(
    "content",
    [
        '{"format": 2, "peers": []}',
        '{"peers": []}',
        "[]",
        '"trust"',
        "not json",
        "",
        '{"format": 1, "peers": 5}',
        '{"format": 1, "peers": null}',
        '{"format": 1, "peers": [5]}',
        '{"format": 1, "peers": [{"roles": ["pull"]}]}',
        '{"format": 1, "peers": [{"id": "AAAA", "roles": ["pull"]}]}',
        json.dumps({"format": 1, "peers": [{"id": str(ALICE)}]}),
        json.dumps({"format": 1, "peers": [{"id": str(ALICE), "roles": ["root"]}]}),
        json.dumps({"format": 1, "peers": [{"id": str(ALICE), "roles": ["pull"], "name": 5}]}),
    ],
    ids=[
        "format-2",
        "no-format",
        "list",
        "string",
        "not-json",
        "empty",
        "peers-int",
        "peers-null",
        "entry-int",
        "no-id",
        "bad-id",
        "no-roles",
        "bad-role",
        "name-int",
    ],
)
def test_bad_file_rejected(tmp_path: Path, content: str) -> None:
    """An unknown format or malformed trust file raises ConfigError, never a raw error."""
    (tmp_path / TRUST_FILE).write_text(content)
    with pytest.raises(ConfigError):
        TrustStore.load(tmp_path)
