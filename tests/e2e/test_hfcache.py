"""Hugging Face cache interop: publish a snapshot from a hand-built hub cache,
pull it into another cache, and load it back with huggingface_hub offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from p2pckpt.store.catalog import CATALOG_FILE, Catalog
from tests.e2e.nodes import Pair, no_mdns, run, run_json, start_server

COMMIT = "3f1c2a7b9d0e4f5a6b7c8d9e0f1a2b3c4d5e6f70"
CARD = "---\nlicense: apache-2.0\nbase_model:\n- acme/base-7b\ntags: [x]\n---\n# tiny\n"
CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 16}


def safetensors_bytes(tensors: dict[str, int]) -> bytes:
    """A real safetensors file of F32 tensors (name -> element count)."""
    header: dict[str, object] = {}
    data = b""
    for name, count in tensors.items():
        raw = struct.pack(f"<{count}f", *(i / 7 for i in range(count)))
        header[name] = {
            "dtype": "F32",
            "shape": [count],
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's name


def build_cache(cache: Path, files: dict[str, bytes], lfs: set[str]) -> Path:
    """``models--acme--tiny`` as huggingface_hub lays it out: blobs named by
    etag, a snapshot of relative links, refs/main."""
    repo = cache / "models--acme--tiny"
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for rel, data in files.items():
        name = hashlib.sha256(data).hexdigest() if rel in lfs else git_sha1(data)
        (repo / "blobs" / name).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / name, link.parent))
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


LOAD = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors import safe_open
from transformers import AutoConfig
folder = snapshot_download("acme/tiny")
config = AutoConfig.from_pretrained("acme/tiny")
weights = hf_hub_download("acme/tiny", "model.safetensors")
with safe_open(weights, framework="numpy") as f:
    sums = {k: float(f.get_tensor(k).sum()) for k in f.keys()}
print(json.dumps({"folder": folder, "n_embd": config.n_embd, "sums": sums,
                  "nested": open(hf_hub_download("acme/tiny", "sub/notes.txt")).read()}))
"""


def load_offline(cache: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HOME", None)
    out = subprocess.run(
        [sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_publish_from_and_pull_into_hf_cache(pair: Pair, tmp_path: Path) -> None:
    files = {
        "config.json": json.dumps(CONFIG).encode(),
        "README.md": CARD.encode(),
        "model.safetensors": safetensors_bytes({"wte": 128, "wpe": 64, "h.0.w": 1 << 20}),
        "sub/notes.txt": b"nested files keep their folder\n",
    }
    src_cache = tmp_path / "hub-a"
    src_repo = build_cache(src_cache, files, lfs={"model.safetensors"})
    expected = load_offline(src_cache)  # the hand-built cache is what the hub reads

    doc = run_json(pair.a, "publish", "--hf-cache", "acme/tiny", "--cache-dir", str(src_cache))
    assert doc["name"] == "tiny" and doc["files"] == 4
    assert doc["bytes"] == sum(len(d) for d in files.values())  # the blobs' bytes, not links
    (row,) = run_json(pair.a, "ls", "--local")
    assert row["location"] == str(src_repo / "snapshots" / COMMIT)
    assert row["meta"] == {
        "base_model": "acme/base-7b",
        "format": "safetensors",
        "hf_ref": "main",
        "hf_repo": "acme/tiny",
        "hf_revision": COMMIT,
        "license": "apache-2.0",
    }

    server = pair.serve_a()  # serves the snapshot through its links into blobs/
    listed = run(pair.b, "ls", "--peer", server.addr).stdout
    header, line = listed.splitlines()
    assert header.split()[:5] == ["VERSION", "SIZE", "FILES", "FORMAT", "STEP"]
    assert line.split()[:7] == ["tiny@1", "4.2", "MB", "4", "safetensors", "-", "acme/base-7b"]
    assert "apache-2.0" in line and "offered by a (direct)" in line
    dst_cache = tmp_path / "hub-b"
    got = run_json(pair.b, "pull", "tiny", "--from", server.addr, "--into-hf-cache", str(dst_cache))
    dst_repo = dst_cache / "models--acme--tiny"
    snap = dst_repo / "snapshots" / COMMIT
    assert got["dest"] == str(snap)
    assert got["bytes_downloaded"] == doc["bytes"]
    assert (dst_repo / "refs" / "main").read_text() == COMMIT
    # Same blob names as the hub's own (sha256 for LFS files, git sha1 otherwise),
    # so a later online download of the same file finds it already there.
    assert sorted(p.name for p in (dst_repo / "blobs").iterdir()) == sorted(
        p.name for p in (src_repo / "blobs").iterdir()
    )
    for rel in files:
        assert (snap / rel).is_symlink() and (snap / rel).read_bytes() == files[rel]
        assert not os.path.isabs(os.readlink(snap / rel))
    assert [p.name for p in dst_repo.iterdir() if p.name.startswith(".")] == [".p2pckpt"]

    loaded = load_offline(dst_cache)
    assert loaded["folder"] == str(snap)
    assert {k: v for k, v in loaded.items() if k != "folder"} == {
        k: v for k, v in expected.items() if k != "folder"
    }
    assert loaded["n_embd"] == 8 and loaded["nested"] == "nested files keep their folder\n"

    assert run(pair.b, "verify", str(snap)).returncode == 0  # through the links
    again = run_json(
        pair.b, "pull", "tiny", "--from", server.addr, "--into-hf-cache", str(dst_cache)
    )
    assert again["bytes_downloaded"] == 0 and again["dest"] == str(snap)

    # The hub's own folder for the repo is added to only when the user names
    # the repo; its extra files stay, and a link naming other bytes is refused.
    (src_repo / "blobs" / "tok").write_text("{}")
    (src_repo / "snapshots" / COMMIT / "tokenizer.json").symlink_to("../../blobs/tok")
    into_src = ("pull", "tiny", "--from", server.addr, "--into-hf-cache", str(src_cache))
    refused = run(pair.b, *into_src, check=False)
    assert refused.returncode == 2 and "--hf-repo acme/tiny" in refused.stderr, refused.stderr
    same = run_json(pair.b, *into_src, "--hf-repo", "acme/tiny")
    assert same["bytes_downloaded"] == 0
    assert (src_repo / "snapshots" / COMMIT / "tokenizer.json").read_text() == "{}"
    liar = tmp_path / "liar"
    liar.mkdir()
    (liar / "config.json").write_text('{"model_type": "evil"}')
    run(pair.a, "publish", str(liar), "--name", "innocent", "--meta", "hf_repo=acme/tiny",
        "--meta", f"hf_revision={COMMIT}")  # fmt: skip
    poisoned = run(
        pair.b, "pull", "innocent", "--from", server.addr, "--into-hf-cache", str(dst_cache),
        check=False,
    )  # fmt: skip
    assert poisoned.returncode == 7 and "already names other bytes" in poisoned.stderr
    assert (snap / "config.json").read_bytes() == files["config.json"]
    assert run(pair.b, "verify", str(snap), "tiny@1").returncode == 0
    assert not [p for p in dst_repo.iterdir() if p.name.startswith(".p2pckpt-incoming")]

    # A layout cut short by a crash: the incoming copy has lost a file to
    # blobs/ and the catalog still points at it. The next pull starts afresh.
    incoming = tmp_path / "hub-c" / "models--acme--tiny" / f".p2pckpt-incoming-{got['root'][:16]}"
    shutil.copytree(snap, incoming)  # regular files, as a pull leaves them
    (incoming.parent / ".p2pckpt").touch()  # the repo folder p2pckpt made
    (incoming / "config.json").unlink()
    catalog = Catalog(pair.b / CATALOG_FILE)
    entry = catalog.by_root(bytes.fromhex(got["root"]))
    assert entry is not None
    catalog.add(entry.manifest(), entry.envelope, incoming, "pulled")
    catalog.close()
    healed = run_json(
        pair.b, "pull", "tiny", "--from", server.addr, "--into-hf-cache", str(tmp_path / "hub-c")
    )
    assert healed["dest"] == str(tmp_path / "hub-c" / "models--acme--tiny" / "snapshots" / COMMIT)
    assert not incoming.exists()
    assert run(pair.b, "verify", healed["dest"]).returncode == 0


def test_hf_snapshot_link_out_of_blobs_is_refused(pair: Pair, tmp_path: Path) -> None:
    """R-42: a snapshot link that leaves its repository's blobs/ fails the publish."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any checkpoint\n")
    repo = build_cache(tmp_path / "hub", {"config.json": b"{}"}, lfs=set())
    (repo / "snapshots" / COMMIT / "stolen.txt").symlink_to(secret)
    out = run(
        pair.a,
        "publish",
        "--hf-cache",
        "acme/tiny@main",
        "--cache-dir",
        str(tmp_path / "hub"),
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "stolen.txt" in out.stderr and "blob" in out.stderr
    assert run_json(pair.a, "ls", "--local") == []


def test_hf_cache_user_errors(pair: Pair, tmp_path: Path) -> None:
    """Unknown repo or revision: exit 3; a bad repo id or both PATH and --hf-cache: exit 2;
    pulling a version that was not published from a cache needs --hf-repo."""
    build_cache(tmp_path / "hub", {"config.json": b"{}"}, lfs=set())
    hub = str(tmp_path / "hub")
    cases = [
        (("--hf-cache", "acme/other", "--cache-dir", hub), 3, "not in the Hugging Face cache"),
        (("--hf-cache", "acme/tiny@v9", "--cache-dir", hub), 3, "no revision 'v9'"),
        (("--hf-cache", "../etc", "--cache-dir", hub), 2, "not a Hugging Face repo id"),
        (("--hf-cache", "acme/tiny@../../x", "--cache-dir", hub), 2, "bad revision"),
        ((str(tmp_path), "--hf-cache", "acme/tiny", "--cache-dir", hub), 2, "not both"),
    ]
    for args, code, message in cases:
        out = run(pair.a, "publish", *args, check=False)
        assert (out.returncode, message in out.stderr) == (code, True), (args, out.stderr)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(safetensors_bytes({"w": 16}))
    run(pair.a, "publish", str(plain), "--name", "plain")
    server = pair.serve_a()
    out = run(
        pair.b,
        "pull",
        "plain",
        "--from",
        server.addr,
        "--into-hf-cache",
        str(tmp_path / "b"),
        check=False,
    )
    assert out.returncode == 2 and "--hf-repo" in out.stderr, out.stderr
    got = run_json(
        pair.b,
        "pull",
        "plain",
        "--from",
        server.addr,
        "--into-hf-cache",
        str(tmp_path / "b"),
        "--hf-repo",
        "me/plain",
    )
    link = Path(got["dest"])  # a one-file checkpoint: the catalog points at its link
    snap = link.parent
    assert link == tmp_path / "b" / "models--me--plain" / "snapshots" / snap.name / plain.name
    assert link.is_symlink() and link.read_bytes() == plain.read_bytes()
    assert (snap.parent.parent / "refs" / "main").read_text() == snap.name
    assert run(pair.b, "verify", str(link)).returncode == 0
    again = run_json(
        pair.b, "pull", "plain", "--from", server.addr, "--into-hf-cache", str(tmp_path / "b"),
        "--hf-repo", "me/plain",
    )  # fmt: skip
    assert again["bytes_downloaded"] == 0 and again["dest"] == str(link)
    # B serves it from the snapshot, through the link, to a third node.
    c = tmp_path / "C"
    c_id = run(c, "init").stdout.strip()
    no_mdns(c)
    run(pair.b, "trust", "add", c_id, "--role", "pull", "--role", "publish", "--role", "push")
    run(c, "trust", "add", pair.b_id, "--role", "pull", "--role", "publish", "--role", "push")
    run(c, "trust", "add", pair.a_id, "--role", "publish")  # A signed it
    b_server = start_server(pair.b, tmp_path / "b-serve.log")
    try:
        back = run_json(c, "pull", "plain", "--from", b_server.addr, "-o", str(tmp_path / "c.st"))
        assert back["bytes_downloaded"] == plain.stat().st_size
        assert (tmp_path / "c.st").read_bytes() == plain.read_bytes()
    finally:
        b_server.stop()
