"""A contributor's file entries as the coordinator takes them (multi-host
publish, ``manifest/gather.py``: ``unpack_entries`` then ``Gather.add``).

Contract: accepted entries are within a manifest's limits, cover each file
with contiguous chunks, form a valid path set, and merge into a manifest a
puller would accept; anything else is a ``HostRefused`` naming the host,
never an unexpected error.

Input: the GatherOffer's entries bytes (msgpack).
"""

from __future__ import annotations

from p2pckpt.errors import HostRefused
from p2pckpt.manifest import manifest as mf
from p2pckpt.manifest.gather import Gather, pack_entries, parse_entries, unpack_entries
from tests.fuzz.contract import check_refusal
from tests.fuzz.values import PUBLISHER, signed

NAME = "gather"
MAX_LEN = 1 << 16


def one_input(data: bytes) -> None:
    gather = Gather("fuzz", 1)
    try:
        doc = unpack_entries("host", data)
        gather.add("host", doc)
    except HostRefused as exc:
        assert exc.host == "host"
        check_refusal(exc)
        return
    assert gather.challenge(bytes(32))["host"]  # at least one chunk is always asked
    # what passed the checks signs into a manifest that decodes again
    files = parse_entries("host", doc)
    draft = mf.Manifest("fuzz", 1, PUBLISHER.peer_id, 1, {}, "dir", files)
    try:
        manifest, envelope = mf.sign(draft, PUBLISHER)
    except mf.ManifestError as exc:  # only the envelope's own size limit may refuse it
        assert "too large" in str(exc), exc
        return
    assert mf.verify(envelope) == manifest


def seeds() -> list[bytes]:
    """Real manifests' files, as contributors send them."""
    return [pack_entries(manifest.files) for manifest, _ in signed()]
