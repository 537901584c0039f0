"""Tests for p2pckpt.identity.trust: the trust store, roles and its file."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from p2pckpt.errors import ConfigError, NotAuthorized, TrustError, UnknownPeer
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.identity.trust import (
    ROLES,
    TRUST_FILE,
    TrustedPeer,
    TrustFile,
    TrustStore,
    publisher_problem,
)

ALICE = PeerId(bytes(range(32)))
BOB = PeerId(bytes(range(1, 33)))
CAROL = PeerId(bytes(range(2, 34)))


def test_add_and_require() -> None:
    """An added peer is returned by require, with the pull role only by
    default (least privilege, R-64); every role when asked for."""
    store = TrustStore()
    added = store.add(ALICE, "alice")
    assert added == TrustedPeer(ALICE, "alice", frozenset({"pull"}))
    assert store.require(ALICE, "pull") == added
    for role in ("publish", "push"):
        with pytest.raises(NotAuthorized):
            store.require(ALICE, role)
    added = store.add(ALICE, "alice", ROLES)
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


def test_a_name_names_one_peer(tmp_path: Path) -> None:
    """A name already given to another peer is refused; renaming a peer to its own
    name is fine; a file written before the rule still loads, and its shared name
    is then refused as an ADDR with a clear error rather than taken as an ID."""
    store = TrustStore()
    store.add(ALICE, "nas")
    with pytest.raises(ConfigError, match="already given"):
        store.add(BOB, "nas")
    store.add(ALICE, "nas", roles=["pull", "publish"])
    store.add(BOB, "ws")
    assert store.resolve("nas") == ALICE
    old = TrustStore()
    old.add(ALICE, "nas")
    old.add(BOB, "nas", unique_name=False)
    old.save(tmp_path)
    loaded = TrustStore.load(tmp_path)
    assert len(list(loaded)) == 2
    with pytest.raises(ConfigError, match="2 trusted peers are named"):
        loaded.resolve("nas")


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


# --- the live owner of the file, and the publisher rule ---------------------------


def test_trust_file_sees_changes_made_by_another_process(tmp_path: Path) -> None:
    """Every lookup sees trust.json as it is now: a removal written by another
    writer (``trust rm`` in another process) is seen at the next call, and
    ``generation`` tells that it changed."""
    store = TrustStore()
    store.add(ALICE, "alice", ROLES)
    store.save(tmp_path)
    live = TrustFile(tmp_path)
    assert live.current().get(ALICE) is not None
    gen = live.generation
    assert live.current().get(ALICE) is not None and live.generation == gen  # unchanged
    other = TrustStore.load(tmp_path)
    other.remove(ALICE)
    other.add(BOB, "bob")
    other.save(tmp_path)
    assert live.current().get(ALICE) is None
    assert live.current().get(BOB) is not None
    assert live.generation == gen + 1


def test_trust_file_fails_closed_on_a_broken_edit(tmp_path: Path) -> None:
    """A file that stops parsing trusts nobody (a revocation is never lost to a
    typo); fixed, it is read again. At start, a broken file is an error."""
    store = TrustStore()
    store.add(ALICE, "alice", ROLES)
    store.save(tmp_path)
    live = TrustFile(tmp_path)
    (tmp_path / TRUST_FILE).write_text('{"format": 1, "peers": [')
    assert list(live.current()) == []
    store.save(tmp_path)
    assert live.current().get(ALICE) is not None
    (tmp_path / TRUST_FILE).write_text("nonsense")
    with pytest.raises(ConfigError):
        TrustFile(tmp_path)


def test_trust_file_missing_is_empty_and_save_is_seen(tmp_path: Path) -> None:
    live = TrustFile(tmp_path)
    assert list(live.current()) == []
    store = TrustStore()
    store.add(CAROL, "carol")
    live.save(store)
    assert live.current().get(CAROL) is not None
    assert TrustFile(tmp_path).current().get(CAROL) is not None


ME = PeerId(bytes(range(5, 37)))


def test_publisher_rule_without_names_needs_the_publish_role() -> None:
    """Unnamed: ourselves, or a trusted peer holding ``publish``; a peer that
    may only pull, or a stranger, is refused with the reason (R-64)."""
    store = TrustStore()
    store.add(ALICE, "alice", ["publish"])
    store.add(BOB, "bob")  # pull only
    assert publisher_problem(store, ME, ALICE) is None
    assert publisher_problem(store, ME, ME) is None
    assert "not with the 'publish' role" in (publisher_problem(store, ME, BOB) or "")
    assert publisher_problem(store, ME, CAROL) == "not a publisher we trust"


def test_publisher_rule_with_names_takes_only_those() -> None:
    """Named (IDs or trusted names): only those, each still in the trust store;
    another publisher, even one holding ``publish``, is refused."""
    store = TrustStore()
    store.add(ALICE, "nas", ["pull"])
    store.add(BOB, "ws", ["publish"])
    assert publisher_problem(store, ME, ALICE, ["nas"]) is None
    assert publisher_problem(store, ME, ALICE, [str(ALICE)]) is None
    assert "not one of the publishers" in (publisher_problem(store, ME, BOB, ["nas"]) or "")
    assert publisher_problem(store, ME, ME, ["nas"]) is not None
    assert publisher_problem(store, ME, CAROL, [str(CAROL)]) is not None  # named, not trusted
    assert publisher_problem(store, ME, ALICE, ["typo", "nas"]) is None
    store.remove(ALICE)
    assert publisher_problem(store, ME, ALICE, ["nas"]) is not None  # revoked: gone at once
