"""Real processes over 127.0.0.1 against hostile peers: trust, secrecy, tampering, garbage.

In-process adversaries (a capturing proxy, a lying seeder, raw garbage clients) are
built from the project's own protocol classes; every wait has a deadline and every
socket, file and process is closed.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import blake3
import msgpack
import pytest
import trio

from p2pckpt.channel.handshake import ChannelHandshake
from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import BadSignature, ChannelClosed, P2pckptError, UnsafePath
from p2pckpt.home import Home
from p2pckpt.identity.keys import NodeKey
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import Chunk, boundaries, chunk_hash
from p2pckpt.manifest.manifest import SIGN_CONTEXT, FileEntry, Manifest, sign, verify
from p2pckpt.store import journal
from p2pckpt.store.staging import staging_path
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import (
    CLIENT_ACCEPTS,
    SERVER_ACCEPTS,
    MessageReader,
    chunk_header,
    encode,
)
from p2pckpt.wire.features import FEATURES
from tests.e2e.nodes import (
    CLI,
    Pair,
    Server,
    make_checkpoint,
    no_mdns,
    run,
    run_json,
    same_tree,
)

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
HEADER = struct.Struct(">BI")  # wire frame header: type, body length
T_MAN_REQ, T_MAN_RESP, T_CHUNK_REQ, T_CHUNK = 3, 4, 5, 6
SMALL_CHUNK = 64 * 1024


# -- helpers -----------------------------------------------------------------------


async def arun(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one CLI command without blocking the trio loop (killed at the deadline)."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [*CLI, "--home", str(home), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
        )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def assert_refused(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    """Exit ``code``, one clean line on stderr containing ``needle``; nothing on
    stdout but, under ``--json``, the one error document saying the same."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    if "--json" in proc.args:
        doc = json.loads(proc.stdout)
        assert set(doc) == {"error"} and doc["error"]["code"] == code, doc
        assert doc["error"]["message"] in proc.stderr
    else:
        assert proc.stdout == ""


def tree(root: Path, *skip: Path) -> set[str]:
    """Every path under ``root`` (files and directories), except under ``skip``."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not any(p == s or p.is_relative_to(s) for s in skip)
    }


def wait_for_log(server: Server, pattern: str, count: int = 1, timeout: float = 10.0) -> str:
    """Poll the server's log until ``pattern`` matched ``count`` times."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log.read_text()
        if len(re.findall(pattern, text)) >= count or time.monotonic() > deadline:
            assert len(re.findall(pattern, text)) >= count, f"{pattern!r} not in log:\n{text}"
            return text
        time.sleep(0.05)


def new_key(path: Path) -> NodeKey:
    """A fresh node home (so its ID can be trusted by the CLI); returns its key."""
    home, _ = Home.init(path)
    home.catalog.close()
    return home.key


def signed_file(key: NodeKey, name: str, data: bytes) -> tuple[Manifest, bytes, list[bytes]]:
    """A valid manifest for one file in small chunks, signed by ``key``."""
    pieces = [data[off : off + n] for off, n in boundaries(len(data), SMALL_CHUNK)]
    chunks, off = [], 0
    for piece in pieces:
        chunks.append(Chunk(off, len(piece), chunk_hash(piece)))
        off += len(piece)
    manifest = Manifest(
        name=name,
        version=1,
        publisher=key.peer_id,
        created=int(time.time()),
        meta={},
        kind="file",
        files=(FileEntry("model.safetensors", len(data), tuple(chunks)),),
    )
    manifest, envelope = sign(manifest, key)
    return manifest, envelope, pieces


def raw_envelope(key: NodeKey, name: str, kind: str, files: list[tuple[str, bytes]]) -> bytes:
    """A correctly signed envelope for any body, bypassing ``sign``'s validation.

    Follows the canonical encoding documented in manifest.py, one chunk per file.
    """
    entries = [
        [path, len(data), [[0, len(data), chunk_hash(data)]]] for path, data in sorted(files)
    ]
    body: bytes = msgpack.packb(
        ["p2pckpt-manifest", 1, name, 1, key.peer_id.key, int(time.time()), [], kind, entries],
        use_bin_type=True,
    )
    signature = key.sign(SIGN_CONTEXT + blake3.blake3(body).digest())
    envelope: bytes = msgpack.packb(
        ["p2pckpt-signed-manifest", 1, body, signature], use_bin_type=True
    )
    return envelope


CONNECTION_DEADLINE = 90.0  # longer than any ``arun`` pull against it


class EvilSeeder:
    """A seeder in the test process: the real handshake and codec, scripted answers."""

    def __init__(self, key: NodeKey) -> None:
        self.key = key
        self.envelope = b""
        self.chunks: list[bytes] = []
        self.manifest_reply: Callable[[m.ManifestRequest], bytes] | None = None
        self.chunk_reply: Callable[[m.ChunkRequest], bytes] | None = None
        self.requests: list[m.Message] = []
        self.addr = ""

    def offer(
        self,
        envelope: bytes,
        chunks: list[bytes],
        *,
        manifest_reply: Callable[[m.ManifestRequest], bytes] | None = None,
        chunk_reply: Callable[[m.ChunkRequest], bytes] | None = None,
    ) -> None:
        self.envelope, self.chunks = envelope, chunks
        self.manifest_reply, self.chunk_reply = manifest_reply, chunk_reply
        self.requests = []

    def honest_chunk(self, req: m.ChunkRequest) -> bytes:
        data = self.chunks[req.index]
        return chunk_header(req.req_id, len(data)) + data

    def _reply(self, msg: m.Message) -> bytes:
        self.requests.append(msg)
        if isinstance(msg, m.ManifestRequest):
            if self.manifest_reply is not None:
                return self.manifest_reply(msg)
            return encode(m.ManifestResponse(self.envelope))
        if isinstance(msg, m.ChunkRequest):
            return (self.chunk_reply or self.honest_chunk)(msg)
        if isinstance(msg, m.HaveRequest):
            return encode(m.Have(msg.root, True))
        if isinstance(msg, m.Cancel):
            return b""
        if isinstance(msg, m.Hello):  # speaks the current protocol, lies elsewhere
            return encode(m.Hello(1, "evil", FEATURES))
        return encode(m.ListResponse(()))

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            # Bounded, but the end of one connection, not of the test: a
            # TooSlowError here escaped into the fixture's nursery and failed
            # a test whose pull ran slowly on a loaded machine. The pull
            # itself is bounded by ``arun``'s deadline.
            with trio.move_on_after(CONNECTION_DEADLINE):
                secure = await open_secure(stream, self.key, initiator=False)
                reader = MessageReader(SERVER_ACCEPTS)
                while data := await secure.receive_some():
                    for msg in reader.feed(data):
                        await secure.send_all(self._reply(msg))
        except (P2pckptError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the puller hung up on us, as it should
        finally:
            await stream.aclose()

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, self.handle, listeners)
        self.addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.fixture
async def evil(pair: Pair, tmp_path: Path) -> AsyncIterator[EvilSeeder]:
    """A hostile seeder on 127.0.0.1 whose key B trusts for every role."""
    key = new_key(tmp_path / "M")
    await arun(
        pair.b,
        "trust",
        "add",
        str(key.peer_id),
        "--name",
        "m",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    seeder = EvilSeeder(key)
    async with trio.open_nursery() as nursery:
        await seeder.start(nursery)
        yield seeder
        nursery.cancel_scope.cancel()


# -- 1. trust ------------------------------------------------------------------------


def test_untrusted_puller_is_refused(pair: Pair, tmp_path: Path) -> None:
    """A peer the seeder does not trust gets exit 5, one line, no names, and a logged refusal."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(50_000))
    run(pair.a, "publish", str(f), "--name", "secret-llama-ft")
    server = pair.serve_a()
    c = tmp_path / "C"
    c_id = run(c, "init").stdout.strip()
    no_mdns(c)
    run(
        c,
        "trust",
        "add",
        pair.a_id,
        "--name",
        "a",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )  # so the refusal is A's, not C's
    dest = tmp_path / "c-out"
    pulled = run(c, "pull", "secret-llama-ft", "--from", server.addr, "-o", str(dest), check=False)
    listed = run(c, "ls", "--peer", server.addr, "--json", check=False)
    for proc in (pulled, listed):
        assert_refused(proc, 5, "we do not trust you")
        assert "secret-llama-ft" not in proc.stderr
    assert not dest.exists() and not staging_path(dest).exists()
    assert run_json(c, "ls", "--local") == []
    log = wait_for_log(
        server, rf'refused connection peer={c_id[:5]} from=127\.0\.0\.1:\d+ error=".*not trusted', 2
    )
    assert "secret-llama-ft" not in log
    assert server.alive()


def test_puller_refuses_untrusted_seeder(pair: Pair, tmp_path: Path) -> None:
    """A puller that does not trust the seeder's key refuses it with exit 5 and writes nothing."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(50_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    run(pair.b, "trust", "rm", pair.a_id)
    before = tree(tmp_path, pair.a, pair.b)
    dest = tmp_path / "out" / "m.pt"
    pulled = run(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest), check=False)
    listed = run(pair.b, "ls", "--peer", server.addr, check=False)
    for proc in (pulled, listed):
        assert_refused(proc, 5, f"peer {pair.a_id[:5]} is not trusted")
    assert not dest.exists()
    assert tree(tmp_path, pair.a, pair.b) == before
    assert run_json(pair.b, "ls", "--local") == []
    assert server.alive()


# -- 2. nothing in clear on the wire -------------------------------------------------


class CaptureProxy:
    """A TCP relay on 127.0.0.1 that records every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.transcripts: list[bytearray] = []
        self.addr = ""

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, log: bytearray) -> None:
        try:
            while data := await src.receive_some(65536):
                log += data
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(self, client: trio.SocketStream) -> None:
        try:
            with trio.fail_after(60):
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                try:
                    up, down = bytearray(), bytearray()
                    self.transcripts += [up, down]
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, up)
                        nursery.start_soon(self._pump, server, client, down)
                finally:
                    await server.aclose()
        finally:
            await client.aclose()

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, self.handle, listeners)
        self.addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_wire_carries_no_plaintext(pair: Pair, tmp_path: Path) -> None:
    """Recorded ls + pull traffic holds no name, path, metadata, key, hash or 64 file bytes."""
    content = random.Random(7).randbytes(256 * 1024)
    rel = "weights/secret-shard-00001-of-00001.safetensors"
    ckpt = tmp_path / "ckpt"
    (ckpt / "weights").mkdir(parents=True)
    (ckpt / rel).write_bytes(content)
    (ckpt / "config.json").write_text('{"arch": "secret-arch-marker"}')
    pub = await arun(
        pair.a,
        "publish",
        str(ckpt),
        "--name",
        "secret-llama-ft",
        "--json",
        "--meta",
        "base=secret-base-model",
    )
    assert pub.returncode == 0, pub.stderr
    root = bytes.fromhex(json.loads(pub.stdout)["root"])
    server = pair.serve_a()
    proxy = CaptureProxy(server.port)
    dest = tmp_path / "got"
    async with trio.open_nursery() as nursery:
        await proxy.start(nursery)
        listed = await arun(pair.b, "ls", "--peer", proxy.addr)
        pulled = await arun(
            pair.b,
            "pull",
            "secret-llama-ft",
            "--from",
            proxy.addr,
            "-o",
            str(dest),
            "--streams",
            "2",
        )
        nursery.cancel_scope.cancel()
    assert listed.returncode == 0 and "secret-llama-ft" in listed.stdout, listed.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert same_tree(ckpt, dest)
    captured = [bytes(t) for t in proxy.transcripts]
    assert len(captured) >= 4 and sum(map(len, captured)) > len(content)
    secrets = [
        b"secret-llama-ft",
        rel.encode(),
        b"secret-shard",
        b"config.json",
        b"secret-arch-marker",
        b"secret-base-model",
        b"safetensors",
        root,
        chunk_hash(content),
        PeerId.parse(pair.a_id).key,
        PeerId.parse(pair.b_id).key,
    ]
    for t in captured:
        for s in secrets:
            assert s not in t, f"{s[:40]!r} visible on the wire"
    # Any 64-byte run of the file contains a whole 32-byte block at an offset that is
    # a multiple of 32, so it is enough to look for those blocks at every offset.
    blocks = {content[i : i + 32] for i in range(0, len(content), 32)}

    def leaks(t: bytes) -> list[int]:
        return [i for i in range(len(t) - 31) if t[i : i + 32] in blocks]

    assert leaks(os.urandom(99) + content[1001:1065] + os.urandom(99))  # the detector works
    for t in captured:
        assert not leaks(t), f"file bytes in clear at offsets {leaks(t)[:5]}"


# -- 3. seeder's file changed after publishing ---------------------------------------


def test_file_changed_after_publishing_is_refused(pair: Pair, tmp_path: Path) -> None:
    """A shard altered in place (same size, same mtime) fails the pull (exit 9); serving goes on."""
    shards = {
        "model-00001-of-00002.safetensors": 600_000,
        "model-00002-of-00002.safetensors": 500_000,
        "config.json": 200,
    }
    ckpt = make_checkpoint(tmp_path / "ckpt", shards, seed=3)
    good = make_checkpoint(tmp_path / "good", shards, seed=4)
    run(pair.a, "publish", str(ckpt), "--name", "tampered")
    run(pair.a, "publish", str(good), "--name", "intact")
    shard = ckpt / "model-00002-of-00002.safetensors"
    st = shard.stat()
    with open(shard, "r+b") as f:
        f.seek(250_000)
        old = f.read(8)
        f.seek(250_000)
        f.write(bytes(b ^ 0xFF for b in old))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    server = pair.serve_a()
    dest = tmp_path / "out" / "tampered"
    proc = run(pair.b, "pull", "tampered", "--from", server.addr, "-o", str(dest), check=False)
    assert_refused(proc, 9, "changed after publishing")
    assert not dest.exists()
    wait_for_log(
        server, r'refused chunk name=tampered version=1 error=".*changed after it was published'
    )
    assert server.alive()
    doc = run_json(
        pair.b, "pull", "intact", "--from", server.addr, "-o", str(tmp_path / "out" / "intact")
    )
    assert doc["name"] == "intact" and same_tree(good, tmp_path / "out" / "intact")
    assert server.alive()


# -- 4. a lying seeder that B trusts --------------------------------------------------


async def test_corrupt_chunk_is_never_kept(pair: Pair, evil: EvilSeeder, tmp_path: Path) -> None:
    """A flipped chunk from a trusted seeder fails the pull (exit 9), unwritten and unjournaled."""
    data = random.Random(11).randbytes(8 * SMALL_CHUNK + 123)
    manifest, envelope, pieces = signed_file(evil.key, "evil-ft", data)
    bad_index = 3
    bad = bytearray(pieces[bad_index])
    bad[1000] ^= 0x01

    def flip(req: m.ChunkRequest) -> bytes:
        if req.index == bad_index:
            return chunk_header(req.req_id, len(bad)) + bytes(bad)
        return evil.honest_chunk(req)

    evil.offer(envelope, pieces, chunk_reply=flip)
    dest = tmp_path / "out" / "model.safetensors"
    proc = await arun(
        pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(dest), "--streams", "1"
    )
    assert_refused(proc, 9, f"chunk {bad_index}")
    assert not dest.exists()
    partial = staging_path(dest)
    done = journal.parse((partial / "journal").read_bytes(), manifest.root, len(pieces))
    assert bad_index not in done  # chunks are fetched in any order; the bad one never lands
    for f in (p for p in partial.rglob("*") if p.is_file()):
        assert bytes(bad) not in f.read_bytes(), f"unverified bytes in {f}"
    staged = (partial / "data" / "model.safetensors").read_bytes()
    for i in done:
        assert staged[i * SMALL_CHUNK : i * SMALL_CHUNK + len(pieces[i])] == pieces[i]

    evil.offer(envelope, pieces)  # the same seeder turns honest: the pull resumes and completes
    proc = await arun(
        pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(dest), "--streams", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == data and not partial.exists()
    fetched = {r.index for r in evil.requests if isinstance(r, m.ChunkRequest)}
    assert fetched == set(range(len(pieces))) - done


async def test_bad_manifest_signature_is_refused(
    pair: Pair, evil: EvilSeeder, tmp_path: Path
) -> None:
    """A manifest signature with one flipped byte is refused with exit 7; nothing is written."""
    data = os.urandom(100_000)
    _, envelope, pieces = signed_file(evil.key, "evil-ft", data)
    outer = msgpack.unpackb(envelope, raw=False)
    sig = bytearray(outer[3])
    sig[17] ^= 0x40
    forged = msgpack.packb([outer[0], outer[1], outer[2], bytes(sig)], use_bin_type=True)
    with pytest.raises(BadSignature):
        verify(forged)
    evil.offer(forged, pieces)
    before = tree(tmp_path, pair.b)
    proc = await arun(
        pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(tmp_path / "out" / "x")
    )
    assert_refused(proc, 7, "signature is invalid")
    assert tree(tmp_path, pair.b) == before
    assert not [r for r in evil.requests if isinstance(r, m.ChunkRequest)]


async def test_untrusted_publisher_is_refused(pair: Pair, evil: EvilSeeder, tmp_path: Path) -> None:
    """A manifest signed by a key trusted only to pull, or not at all, is refused (exit 7)."""
    puller_only = new_key(tmp_path / "P")
    await arun(pair.b, "trust", "add", str(puller_only.peer_id), "--role", "pull")
    stranger = new_key(tmp_path / "Q")
    before = tree(tmp_path, pair.b)
    expected = {
        puller_only: f"{puller_only.peer_id.short} is trusted here, but not with the"
        " 'publish' role",
        stranger: "not a publisher we trust",
    }
    for key in (puller_only, stranger):
        _, envelope, pieces = signed_file(key, "evil-ft", os.urandom(100_000))
        evil.offer(envelope, pieces)
        proc = await arun(
            pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(tmp_path / "out" / "x")
        )
        assert_refused(proc, 7, f"signed by {key.peer_id.short}: {expected[key]}")
        assert not [r for r in evil.requests if isinstance(r, m.ChunkRequest)]
    assert tree(tmp_path, pair.b) == before
    listed = await arun(pair.b, "ls", "--local", "--json")
    assert listed.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        ("dir", ["../evil.bin"]),
        ("dir", ["/etc/x"]),
        ("dir", ["ok.bin", "sub/../../evil.bin"]),
        ("file", ["../evil.bin"]),
    ],
)
async def test_escaping_manifest_path_is_refused(
    pair: Pair, evil: EvilSeeder, tmp_path: Path, kind: str, paths: list[str]
) -> None:
    """A signed manifest naming a path outside DEST is refused with exit 7 and creates nothing."""
    files = [(p, os.urandom(1000)) for p in paths]
    twin = raw_envelope(
        evil.key, "evil-ft", kind, [(f"safe{i}.bin", d) for i, (_, d) in enumerate(files)]
    )
    assert verify(twin).name == "evil-ft"  # the hand-built encoding itself is valid
    envelope = raw_envelope(evil.key, "evil-ft", kind, files)
    with pytest.raises(UnsafePath):
        verify(envelope)
    by_path = dict(files)
    evil.offer(envelope, [by_path[p] for p in sorted(by_path)])
    dest = tmp_path / "out" / "deep" / "d"
    before = tree(tmp_path, pair.b)
    proc = await arun(pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(dest))
    assert proc.returncode == 7, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert tree(tmp_path, pair.b) == before
    assert not (tmp_path / "evil.bin").exists()
    assert not [r for r in evil.requests if isinstance(r, m.ChunkRequest)]


def _frame(kind: int, length: int) -> Callable[[object], bytes]:
    return lambda _req: HEADER.pack(kind, length)


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("huge-chunk-frame", 6, "too large"),
        ("chunk-frame-over-cap", 6, "too large"),
        ("huge-manifest-frame", 6, "too large"),
        ("unrequested-chunk", 6, "unrequested response"),
        ("short-chunk", 9, "hash mismatch"),  # whichever chunk came first
        ("server-only-message", 6, "unexpected message type"),
    ],
)
async def test_seeder_protocol_violation_fails_cleanly(
    pair: Pair, evil: EvilSeeder, tmp_path: Path, case: str, code: int, needle: str
) -> None:
    """Oversized frames, unrequested or short chunks end the pull with one line, no traceback."""
    data = os.urandom(4 * SMALL_CHUNK)
    _, envelope, pieces = signed_file(evil.key, "evil-ft", data)
    replies: dict[str, dict[str, Callable[..., bytes]]] = {
        "huge-chunk-frame": {"chunk_reply": _frame(T_CHUNK, 2**31)},
        "chunk-frame-over-cap": {"chunk_reply": _frame(T_CHUNK, 4 + (16 << 20) + 1)},
        "huge-manifest-frame": {"manifest_reply": _frame(T_MAN_RESP, 2**31)},
        "unrequested-chunk": {
            "chunk_reply": lambda r: (
                chunk_header(r.req_id + 1000, len(pieces[r.index])) + pieces[r.index]
            )
        },
        "short-chunk": {
            "chunk_reply": lambda r: chunk_header(r.req_id, 100) + pieces[r.index][:100]
        },
        "server-only-message": {"chunk_reply": lambda r: encode(m.ChunkRequest(0, bytes(32), 0))},
    }
    evil.offer(envelope, pieces, **replies[case])
    dest = tmp_path / "out" / "model.safetensors"
    proc = await arun(
        pair.b, "pull", "evil-ft", "--from", evil.addr, "-o", str(dest), "--streams", "1"
    )
    assert_refused(proc, code, needle)
    assert not dest.exists()


# -- 5. garbage against a real server --------------------------------------------------


async def _read_to_end(stream: trio.SocketStream, timeout: float) -> str:
    """Read until the server ends the connection; how it ended."""
    with trio.fail_after(timeout):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return "eof"
            except trio.BrokenResourceError:
                return "reset"


async def _send_raw(port: int, data: bytes, half_close: bool) -> str:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            await stream.send_all(data)
            if half_close:
                await stream.send_eof()
        except trio.BrokenResourceError:
            return "reset"
        return await _read_to_end(stream, 5)


async def _stall(port: int, result: dict[str, float]) -> None:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        started = time.monotonic()
        await _read_to_end(stream, 20)
        result["seconds"] = time.monotonic() - started


async def _after_handshake(
    port: int, key: NodeKey, send: Callable[[SecureStream], Awaitable[None]]
) -> tuple[list[m.Message], str]:
    """Handshake as ``key``, misbehave, then read what comes back until the end."""
    with trio.fail_after(5):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
    async with tcp:
        with trio.fail_after(10):
            secure = await open_secure(tcp, key, initiator=True)
        await send(secure)
        reader = MessageReader(CLIENT_ACCEPTS)
        got: list[m.Message] = []
        with trio.fail_after(10):
            while True:
                try:
                    data = await secure.receive_some()
                except ChannelClosed as exc:
                    return got, f"closed: {exc}"
                if not data:
                    return got, "eof"
                got += reader.feed(data)


async def test_server_survives_garbage(pair: Pair, tmp_path: Path) -> None:
    """Garbage, truncated, stalled and malformed connections end alone; the server still serves."""
    ckpt = make_checkpoint(tmp_path / "ckpt", {"model.safetensors": 3_000_000, "config.json": 99})
    pub = await arun(pair.a, "publish", str(ckpt), "--name", "llama-ft", "--json")
    assert pub.returncode == 0, pub.stderr
    root = bytes.fromhex(json.loads(pub.stdout)["root"])
    server = pair.serve_a()
    port = server.port
    b_home = Home.open(pair.b)
    key = b_home.key
    b_home.catalog.close()

    rng = random.Random(1234)
    msg1 = ChannelHandshake(initiator=True, node_key=key).write()
    stall: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stall, port, stall)  # runs alongside everything below

        # Before the handshake completes.
        assert await _send_raw(port, rng.randbytes(70_000), half_close=False) in ("eof", "reset")
        truncated = struct.pack(">H", len(msg1)) + msg1[: len(msg1) // 2]
        started = time.monotonic()
        assert await _send_raw(port, truncated, half_close=True) == "eof"
        assert time.monotonic() - started < 5, "a truncated handshake must not wait for the timeout"
        low_order = struct.pack(">H", 32) + bytes(32)  # an all-zero ephemeral key
        assert await _send_raw(port, low_order, half_close=False) in ("eof", "reset")

        # After a valid handshake as trusted B.
        async def oversized(s: SecureStream) -> None:
            await s.send_all(HEADER.pack(T_CHUNK_REQ, 2**31))

        async def bad_msgpack(s: SecureStream) -> None:
            await s.send_all(HEADER.pack(T_MAN_REQ, 3) + b"\xc1\xc1\xc1")

        async def bad_shape(s: SecureStream) -> None:
            body = msgpack.packb([1, b"short-root", 0], use_bin_type=True)
            await s.send_all(HEADER.pack(T_CHUNK_REQ, len(body)) + body)

        unknown_answers: list[m.Message] = []

        async def unknown_type(s: SecureStream) -> None:  # a newer peer's: answered (issue 20)
            await s.send_all(HEADER.pack(99, 0))
            reader = MessageReader(CLIENT_ACCEPTS)
            with trio.fail_after(10):
                while not unknown_answers:
                    unknown_answers.extend(reader.feed(await s.receive_some()))
            await s.send_all(chunk_header(1, 10) + bytes(10))  # then a violation: this ends it

        async def client_only_type(s: SecureStream) -> None:
            await s.send_all(chunk_header(1, 10) + bytes(10))

        async def forged_record(s: SecureStream) -> None:
            await s.transport.send_all(struct.pack(">H", 48) + rng.randbytes(48))

        for misbehave in (
            oversized,
            bad_msgpack,
            bad_shape,
            unknown_type,
            client_only_type,
            forged_record,
        ):
            got, ended = await _after_handshake(port, key, misbehave)
            assert got == [] and ended == "eof", (misbehave.__name__, got, ended)
        (answer,) = unknown_answers  # the connection lived on after it
        assert isinstance(answer, m.Error) and answer.code == m.UNSUPPORTED, answer

        async def flood(s: SecureStream) -> None:
            burst = b"".join(
                encode(m.ChunkRequest(i, root, 0)) for i in range(3 * m.MAX_OUTSTANDING)
            )
            await s.send_all(burst)  # one record: the server sees every request at once

        got, ended = await _after_handshake(port, key, flood)
        errors = [x for x in got if isinstance(x, m.Error)]
        assert [(e.code, e.req_id) for e in errors] == [(m.TOO_MANY_REQUESTS, None)], got
        assert ended == "eof" and len(got) <= m.MAX_OUTSTANDING + 2

    assert 5 < stall["seconds"] < 15, f"stalled handshake dropped after {stall['seconds']:.1f}s"
    assert server.alive()
    dest = tmp_path / "got"
    doc = await arun(pair.b, "pull", "llama-ft", "--from", server.addr, "-o", str(dest))
    assert doc.returncode == 0, doc.stderr
    assert same_tree(ckpt, dest) and server.alive()
    log = server.log.read_text()
    for expected in (
        "handshake timed out",
        "connection closed during handshake",
        "outstanding-request limit",
        "too large",
        "not msgpack",
        "unexpected message type",
    ):
        assert expected in log, f"{expected!r} not logged:\n{log}"
    assert "Traceback" not in log
