"""Real values, built with the project's own encoders, that the seed corpora
start from: coverage-guided mutation of a valid signed manifest or message
reaches the deep validation paths that random bytes never get past.

Keys come from fixed seeds so that every run (and every saved crash input)
means the same thing.
"""

from __future__ import annotations

import nacl.signing

from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.wire import messages as m

PUBLISHER = NodeKey(nacl.signing.SigningKey(bytes(range(32))))
OTHER = NodeKey(nacl.signing.SigningKey(bytes(range(1, 33))))
CREATED = 1_700_000_000


def _entry(path: str, data: bytes, cut: int) -> FileEntry:
    chunks = []
    for off in range(0, len(data), cut):
        piece = data[off : off + cut]
        chunks.append(Chunk(off, len(piece), chunk_hash(piece)))
    return FileEntry(path, len(data), tuple(chunks))


def manifests() -> list[Manifest]:
    """A directory checkpoint (several files, nested paths, meta) and a one-file one."""
    return [
        Manifest(
            name="llama-7b-ft",
            version=42,
            publisher=PUBLISHER.peer_id,
            created=CREATED,
            meta={"base_model": "llama-7b", "format": "safetensors", "step": "1000"},
            kind="dir",
            files=(
                _entry("config.json", b'{"hidden": 4096}', 64),
                _entry("model-00001.safetensors", bytes(range(256)) * 3, 300),
                _entry("tokenizer/vocab.txt", b"a\nb\nc\n", 64),
            ),
        ),
        Manifest(
            name="ckpt.pt",
            version=0,
            publisher=PUBLISHER.peer_id,
            created=0,
            meta={},
            kind="file",
            files=(_entry("ckpt.pt", b"\x80\x02}q\x00.", 4),),
        ),
    ]


def signed() -> list[tuple[Manifest, bytes]]:
    """Each of ``manifests()`` with its root, and its signed envelope."""
    return [sign(man, PUBLISHER) for man in manifests()]


ROOT = signed()[0][0].root


def messages() -> list[m.Message]:
    """At least one of every wire message, with the optional fields both ways."""
    man, envelope = signed()[0]
    info = m.VersionInfo(
        man.name,
        man.version,
        PUBLISHER.peer_id.key,
        man.root,
        man.total_bytes,
        len(man.files),
        m.list_meta(man.meta),
    )
    return [
        m.ListRequest(),
        m.ListResponse(()),
        m.ListResponse((info, m.VersionInfo("x", 1, bytes(32), bytes(32), 0, 1))),
        m.ManifestRequest(man.name, None),
        m.ManifestRequest(man.name, man.version),
        m.ManifestResponse(envelope),
        m.ChunkRequest(7, man.root, 3),
        m.ChunkRequest(8, man.root, 4, accept=0b1110),
        m.ChunkData(7, b"chunk bytes"),
        m.ChunkPacked(8, 1, b"\x28\xb5\x2f\xfd packed"),
        m.PushRequest(man.name, man.version, man.root, 7450),
        m.PushRequest(
            man.name, man.version, man.root, 7450, ((OTHER.peer_id.key, "10.0.0.5", 7450),)
        ),
        m.PushProgress(10, 100),
        m.PushResult(True, "ok", 100),
        m.PushResult(False, "disk full", 0),
        m.HaveRequest(man.root),
        m.Have(man.root, True),
        m.Have(man.root, False, b"\x05\x01", b"\x02"),
        m.Have(man.root, False, b"\xff"),
        m.Have(man.root, False, b"\x0f", b"", True),
        m.GatherOffer(man.name, man.version, b"\x90"),
        m.GatherChallenge(bytes(32), "rank 1"),
        m.GatherProof(3, b"chunk bytes"),
        m.GatherResult(False, "host rank 2 refused", b""),
        m.GatherResult(True, "signed", b"envelope"),
        m.Cancel(7),
        m.Error(m.NOT_FOUND, "no such chunk", 7),
        m.Error(m.UNAUTHORIZED, "not trusted", None),
    ]
