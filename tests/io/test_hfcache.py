"""hfcache and store.locations: repo ids, refs, card, etags, link confinement (real files)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from p2pckpt.errors import ConfigError, UnsafePath
from p2pckpt.interop import hfcache
from p2pckpt.store import locations

COMMIT = "a" * 40


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("acme/tiny", ("acme/tiny", None)),
        ("gpt2", ("gpt2", None)),
        ("acme/tiny@main", ("acme/tiny", "main")),
        ("acme/tiny@refs/pr/1", ("acme/tiny", "refs/pr/1")),
        (f"acme/tiny@{COMMIT}", ("acme/tiny", COMMIT)),
    ],
)
def test_parse_repo(spec: str, want: tuple[str, str | None]) -> None:
    assert hfcache.parse_repo(spec) == want


@pytest.mark.parametrize(
    "spec",
    ["", "a/b/c", "../x", "acme/..", "acme/tiny@", "acme/tiny@../x", "acme/tiny@a//b",
     "acme/tiny@/x", "-acme/tiny", "acme/ti ny", "acme/tiny@x/.", "a--b/c", "a/b--c"],
)  # fmt: skip
def test_parse_repo_refuses(spec: str) -> None:
    with pytest.raises(ConfigError):
        hfcache.parse_repo(spec)


def _repo(root: Path) -> Path:
    repo = root / "models--acme--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    return repo


def test_source_path_follows_links_only_into_own_blobs(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    other = _repo(tmp_path / "elsewhere")
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs" / "good").write_bytes(b"x")
    (other / "blobs" / "theirs").write_bytes(b"y")
    (tmp_path / "outside").write_bytes(b"z")
    (snap / "ok").symlink_to("../../blobs/good")
    (snap / "sibling").symlink_to(os.path.relpath(other / "blobs" / "theirs", snap))
    (snap / "escape").symlink_to("../../blobs/../../outside")
    (snap / "absolute").symlink_to(tmp_path / "outside")
    (snap / "dangling").symlink_to("../../blobs/missing")
    assert locations.source_path(snap, "ok") == (repo / "blobs" / "good").resolve()
    for name in ("sibling", "escape", "absolute"):
        assert locations.source_path(snap, name) == snap / name  # left to O_NOFOLLOW
    for name in ("sibling", "escape", "absolute", "dangling"):
        solo = tmp_path / name / "models--acme--tiny"
        shutil.copytree(repo, solo, symlinks=True)
        for other_name in {"ok", "sibling", "escape", "absolute", "dangling"} - {name, "ok"}:
            (solo / "snapshots" / COMMIT / other_name).unlink()
        with pytest.raises(UnsafePath, match=name):
            hfcache.walk_snapshot(solo / "snapshots" / COMMIT)
    # Outside a snapshot folder no link is ever followed.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "l").symlink_to(repo / "blobs" / "good")
    assert locations.source_path(plain, "l") == plain / "l"


def test_walk_snapshot_reports_blob_bytes(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs" / "b1").write_bytes(b"12345")
    (snap / "sub").mkdir()
    (snap / "sub" / "w.bin").symlink_to("../../../blobs/b1")
    (snap / "real.txt").write_bytes(b"abc")  # a plain file in a snapshot is fine too
    files = hfcache.walk_snapshot(snap)
    assert [(f.relpath, f.size) for f in files] == [("real.txt", 3), ("sub/w.bin", 5)]
    assert files[1].path == (repo / "blobs" / "b1").resolve()


def test_card_meta(tmp_path: Path) -> None:
    snap = _repo(tmp_path) / "snapshots" / COMMIT
    (snap / "README.md").write_text(
        "---\nlicense: 'mit'\nbase_model:\n  - org/base\n  - org/other\ntags:\n- x\n---\n"
        "license: not-in-the-header\n"
    )
    assert hfcache.card_meta(snap) == {"license": "mit", "base_model": "org/base"}
    (snap / "README.md").write_text("no header\nlicense: mit\n")
    assert hfcache.card_meta(snap) == {}
    (snap / "README.md").write_text("---\nlicense: \x1b[31mred\n---\n")
    assert hfcache.card_meta(snap) == {}


def test_etag_is_the_hubs(tmp_path: Path) -> None:
    small = tmp_path / "config.json"
    small.write_bytes(b"{}")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\0" * 100)
    assert hfcache.etag(small, 2, "config.json") == hashlib.sha1(b"blob 2\0{}").hexdigest()  # noqa: S324
    assert hfcache.etag(weights, 100, "w.safetensors") == hashlib.sha256(b"\0" * 100).hexdigest()


def test_default_cache_follows_hub_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hfcache.default_cache() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("HF_HOME", "/data/hf")
    assert hfcache.default_cache() == Path("/data/hf/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "/fast/hub")
    assert hfcache.default_cache() == Path("/fast/hub")


def test_a_linked_blobs_folder_is_not_followed(tmp_path: Path) -> None:
    """R-42: blobs/ (or snapshots/, or a folder inside the snapshot) that is a
    link elsewhere makes every link through it count as leaving the repo."""
    secrets = tmp_path / "ssh"
    secrets.mkdir()
    (secrets / "id_key").write_text("private")
    repo = tmp_path / "models--acme--tiny"
    (repo / "snapshots" / COMMIT / "sub").mkdir(parents=True)
    (repo / "blobs").symlink_to(secrets)
    snap = repo / "snapshots" / COMMIT
    (snap / "id_key").symlink_to("../../blobs/id_key")
    assert locations.source_path(snap, "id_key") == snap / "id_key"
    with pytest.raises(UnsafePath, match="id_key"):
        hfcache.walk_snapshot(snap)
    (repo / "blobs").unlink()
    (repo / "blobs").mkdir()
    (repo / "blobs" / "b").write_text("fine")
    (snap / "id_key").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (snap / "sub").rmdir()
    (snap / "sub").symlink_to(elsewhere)
    (elsewhere / "w").symlink_to("../../../blobs/b")
    assert locations.source_path(snap, "sub/w") == snap / "sub/w"
