"""Which protocol and which optional features a node speaks (pure).

Nodes of different releases meet all the time (a NAS upgraded last, edge
nodes first). After the handshake a client of 0.2.0 or later sends ``Hello``
(protocol version, release, feature names) and waits for the server's; each
side then uses a message or field added after 0.1.0 only if the *other*
side named its feature. Rules (``docs/protocol.md`` §8):

* a minor release may add a feature: a new message type, a new optional
  field at the end of a body, a new meaning of a flag; it is used only
  towards peers that named it, so older peers never see it;
* unknown feature names are ignored; unknown trailing fields are ignored
  (a Hello's, and those of each message whose feature allows them); an
  unknown message type is answered with an UNSUPPORTED error;
* anything else (a field changing meaning, a message dropped) needs a new
  protocol version, which also changes the handshake's prologue, so such
  peers fail the handshake with a clear message instead of misreading;
* 0.1.0 says nothing: a 0.1.0 server drops a connection that begins with
  a Hello, and the client dials again without one; a 0.1.0 client never
  sends one. Such peers get LEGACY, the features 0.1.0 has without naming
  them. 0.1.0 is supported until protocol 2.
"""

from __future__ import annotations

from typing import Final

PROTOCOL: Final = 1
# Features this release speaks. The first four exist since before 0.1.0
# and are what LEGACY peers understand; the rest came later.
FEATURES: Final = frozenset(
    {
        "codecs",  # ChunkRequest's accept field and ChunkPacked (issue 7)
        "list-meta",  # the 7th field of a ListResponse entry
        "pieces",  # PiecesRequest, PieceList, RangeRequest (issue 18)
        "given",  # a complete source's Have lists what it gave (issue 17)
        "hello",  # this exchange, and Error(UNSUPPORTED) for unknown types
        "in-progress",  # ProgressRequest: signed in-progress manifests (issue 21)
        "multi-host",  # Have's ``fixed`` field: a host's share of a multi-host version
        "gather",  # GatherOffer/Challenge/Proof/Result: named only by a coordinator's listener
        "progress-wait",  # ProgressRequest's after field: a long poll (issue 21)
    }
)
GATHER: Final = "gather"
# What a plain server names: all but ``gather``, which says "a coordinator of
# a multi-host publish listens here" (``publish --gather``), nothing else.
SERVER_FEATURES: Final = FEATURES - {GATHER}
LEGACY: Final = frozenset({"codecs", "list-meta", "pieces", "given"})  # 0.1.0
LEGACY_RELEASE: Final = "0.1.0"


def release() -> str:
    """This release, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("p2pckpt")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


def agreed(theirs: frozenset[str]) -> frozenset[str]:
    """The features both sides speak: the only ones to use."""
    return FEATURES & theirs
