"""The manifest envelope (``verify``) and body (``decode_body``).

Contract (manifest/manifest.py): a validated ``Manifest`` or ``ManifestError``
(``BadSignature``, ``UnsafePath``, ...), never caused by an unexpected
error. Also checked: a decoded manifest is within every limit, its root is
the BLAKE3 of its body, and signing it again gives back the same body and
root (the encoding is canonical); a verified envelope verifies again to the
same manifest.

Input: mode byte (bit 0: body instead of envelope), then the bytes.
"""

from __future__ import annotations

import blake3
import msgpack

from p2pckpt.errors import ManifestError
from p2pckpt.manifest import manifest as mf
from p2pckpt.manifest.paths import validate_path_set
from tests.fuzz.contract import check_refusal
from tests.fuzz.values import PUBLISHER, signed

NAME = "manifest"
MAX_LEN = 1 << 16


def _check(man: mf.Manifest, body: bytes) -> None:
    assert man.root == blake3.blake3(body).digest()
    assert 0 < len(man.files) <= mf.MAX_FILES and man.chunk_count <= mf.MAX_CHUNKS
    assert man.total_bytes <= mf.MAX_TOTAL_BYTES and len(man.meta) <= mf.MAX_META
    assert [i for i, _, _ in man.iter_chunks()] == list(range(man.chunk_count))
    validate_path_set([f.path for f in man.files])
    if man.publisher == PUBLISHER.peer_id:  # canonical: signing it again changes nothing
        again, envelope = mf.sign(man, PUBLISHER)
        assert again == man and again.root == man.root
        assert msgpack.unpackb(envelope)[2] == body


def one_input(data: bytes) -> None:
    if not data:
        return
    raw = data[1:]
    try:
        if data[0] & 1:
            man = mf.decode_body(raw)
            _check(man, raw)
        else:
            man = mf.verify(raw)
            body = msgpack.unpackb(raw)[2]
            _check(man, body)
            assert mf.verify(raw) == man
    except ManifestError as exc:
        check_refusal(exc)


def seeds() -> list[bytes]:
    """Real signed envelopes and their bodies."""
    out = []
    for _, envelope in signed():
        out += [b"\x00" + envelope, b"\x01" + msgpack.unpackb(envelope)[2]]
    return out
