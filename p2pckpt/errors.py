"""The single exception tree of p2pckpt.

::

    P2pckptError
    ├── ConfigError(P2pckptError, ValueError)     bad home, bad config, bad CLI input
    ├── TrustError ── UnknownPeer, NotAuthorized
    ├── ChannelError ── HandshakeFailed (Busy), AuthenticationFailed, ChannelClosed
    ├── ProtocolError ── LocalProtocolError, RemoteProtocolError
    ├── ManifestError ── UnsafePath, BadSignature, Rollback, Expired, Equivocation,
    │                    HostRefused
    ├── TransferError ── ChunkCorrupt, SourceChanged, NotFound, NoSpace,
    │                    DestinationExists, PeerUnreachable, RemoteError, PushIncomplete,
    │                    Paused
    ├── StoreError ── ResumeStateInvalid
    ├── DiscoveryError                             mDNS could not start (no usable interface)
    ├── CopyDiffers                                verify: a local copy does not match
    ├── ReplicasMissing                            publish --replicas K timed out
    ├── DaemonNotRunning                           nothing answers on HOME/run/control.sock
    ├── SystemFailure                              any other OSError that reaches the CLI
    └── Interrupted                                Ctrl-C or SIGTERM stopped a command

Every error that reaches the CLI maps to one line on stderr and an exit code
(``exit_code``; a usage error click reports itself exits ConfigError's 2);
messages never contain key material. An error whose ``reported`` is true was
already shown by the command (a --json document, say): the CLI only exits.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pckpt.replicas import ReplicaReport


class P2pckptError(Exception):
    """Base of every error p2pckpt raises on purpose."""

    exit_code = 1
    reported = False  # the command already showed it: print nothing more


class ConfigError(P2pckptError, ValueError):
    """The user gave something unusable: a bad flag, path, name or config."""

    exit_code = 2


class TrustError(P2pckptError):
    """A peer is not trusted for what it tried."""

    exit_code = 5


class UnknownPeer(TrustError):
    """The remote key is not in the trust store."""


class NotAuthorized(TrustError):
    """The remote key is known but lacks the role for the request."""


class ChannelError(P2pckptError):
    """The secure channel failed or ended."""

    exit_code = 6


class HandshakeFailed(ChannelError):
    """The Noise handshake did not complete (garbage, timeout, wrong prologue)."""


class Busy(HandshakeFailed):
    """The peer is shedding load before any handshake: retry with backoff."""


class AuthenticationFailed(ChannelError):
    """An AEAD tag or signature did not verify; the reason is never exposed."""


class ChannelClosed(ChannelError):
    """The peer closed the connection or the transport broke."""


class ProtocolError(P2pckptError):
    """A wire-protocol rule was broken."""

    exit_code = 6


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol API (a bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, oversized or out of order."""


class ManifestError(P2pckptError):
    """A manifest is malformed or unacceptable."""

    exit_code = 7


class UnsafePath(ManifestError):
    """A manifest path could escape the destination or is not portable."""


class BadSignature(ManifestError):
    """A manifest signature is invalid or from an untrusted publisher."""


class Rollback(ManifestError):
    """A peer offered an older version as the newest (rollback protection)."""

    exit_code = 8


class Expired(ManifestError):
    """The newest version's signed expiry has passed (freeze protection, R-21)."""

    exit_code = 14


class Equivocation(ManifestError):
    """One publisher signed two different manifests for one name@version (R-20)."""


class HostRefused(ManifestError):
    """Multi-host publish: a host's file entries were refused before signing
    (malformed, a path another host holds, or chunks it could not show)."""

    def __init__(self, host: str, reason: str, path: str = "") -> None:
        self.host, self.reason, self.path = host, reason, path
        where = f" ({path!r})" if path else ""
        super().__init__(f"host {host} refused{where}: {reason}; nothing was signed")


class TransferError(P2pckptError):
    """A pull or serve could not complete."""

    exit_code = 1


class ChunkCorrupt(TransferError):
    """A chunk's bytes do not match its BLAKE3 hash."""

    exit_code = 9

    def __init__(self, index: int, detail: str = "hash mismatch") -> None:
        self.index = index
        super().__init__(f"chunk {index}: {detail}")


class SourceChanged(TransferError):
    """A published file no longer matches its manifest (changed after publishing)."""

    exit_code = 9


class Paused(TransferError):
    """The daemon's pulls of this name are paused (``p2pckpt pause``); the
    chunks verified so far are kept for the pull after ``resume``."""


class NotFound(TransferError):
    """The requested name or version is not offered."""

    exit_code = 3


class NoSpace(TransferError):
    """Disk full (or quota, or file too large); the partial copy stays resumable."""

    exit_code = 10


# OSError numbers that mean "no room here" (bytes, inodes, quota, file size,
# a read-only filesystem): each becomes NoSpace at the boundary.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class DestinationExists(TransferError):
    """DEST already holds something that is not this checkpoint."""

    exit_code = 2


class PeerUnreachable(TransferError):
    """No connection could be made to any given peer. ``reason``: why, without
    the "cannot reach X" lead (a route's error inside a longer message: the
    routes a peer ID was tried on, a pull's hosts it could not reach)."""

    exit_code = 4

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class PushIncomplete(TransferError):
    """``p2pckpt push``: not every target verified the version."""

    exit_code = 12


class RemoteError(TransferError):
    """The peer answered with an error message."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"peer refused: {message} ({code})")


class StoreError(P2pckptError):
    """Local state (catalog, journal, staging) could not be read or written."""


class ResumeStateInvalid(StoreError):
    """A resume journal is torn, garbled or for another manifest."""


class DiscoveryError(P2pckptError):
    """LAN discovery could not start: no such interface, or no multicast socket."""

    exit_code = 4


class CopyDiffers(P2pckptError):
    """``p2pckpt verify``: a local copy does not match its signed manifest
    (integrity, as ChunkCorrupt)."""

    exit_code = 9

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


class ReplicasMissing(P2pckptError):
    """Fewer than the asked number of trusted peers held a verified copy in time.
    ``report`` (a ``replicas.ReplicaReport``) says who holds it and who does not."""

    exit_code = 13

    def __init__(self, message: str, report: ReplicaReport) -> None:
        super().__init__(message)
        self.report = report


class DaemonNotRunning(P2pckptError):
    """No daemon listens on this home's control socket (``p2pckpt status`` and friends)."""

    exit_code = 11


class SystemFailure(P2pckptError):
    """An OSError no more specific error covers reached the CLI (exit 1)."""


class Interrupted(P2pckptError):
    """Ctrl-C or a signal stopped a command after a clean shutdown; running it
    again resumes. Shown without the "error:" of the others."""

    exit_code = 130

    def __init__(self, by: str = "Ctrl-C") -> None:
        how = "" if by == "Ctrl-C" else f" ({by})"
        super().__init__(f"interrupted{how}; run the same command again to resume")
        self.by = by


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (nurseries group errors), for a
    one-line log or message."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
