"""Choosing what a pull takes: the newest acceptable version, and its sources.

``choose_source`` asks every connected peer for a name and keeps the newest
version signed by a publisher the pull accepts (``Accept``: the publishers
named, else peers trusted with "publish", R-64), with every peer offering
exactly that version as a source (``Offer``). Refused: a manifest that does
not verify, names something else or rolls "latest" back (``fetch_manifest``);
one publisher's two manifests for one name@version (R-20); two publishers'
different newest versions under one number; an expired newest version
asked for as "latest" (R-21). ``publisher_refusal`` is also asked again
while a pull runs, as trust may change (R-63).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Final

import trio

from p2pckpt.errors import (
    BadSignature,
    Equivocation,
    Expired,
    ManifestError,
    NotFound,
    P2pckptError,
    RemoteProtocolError,
)
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.identity.trust import publisher_problem
from p2pckpt.logs import poll_level
from p2pckpt.manifest.manifest import Manifest, verify, verify_in_progress
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.transfer.swarm import Source
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.pull")


@dataclass(frozen=True)
class Accept:
    """Which signed versions a pull takes: signed by one of ``publishers``
    (IDs or trusted names) or, when none are named, by a peer trusted with
    "publish" (R-64); an expired newest version only with ``allow_expired``."""

    publishers: tuple[str, ...] = ()
    allow_expired: bool = False


def publisher_refusal(home: Home, manifest: Manifest, accept: Accept) -> BadSignature | None:
    """Why ``manifest``'s publisher is not accepted now, as the error to raise."""
    problem = publisher_problem(home.trust, home.key.peer_id, manifest.publisher, accept.publishers)
    if problem is None:
        return None
    known = home.trust.get(manifest.publisher)
    who = known.name if known is not None and known.name else manifest.publisher.short
    return BadSignature(f"{manifest.name}@{manifest.version} is signed by {who}: {problem}")


async def fetch_manifest(
    home: Home,
    conn: PeerConnection,
    name: str,
    version: int | None,
    accept: Accept | None = None,
    note: bool = True,
) -> tuple[Manifest, bytes]:
    """Ask ``conn`` for ``name`` (newest, or ``version``) and check what it
    answers; ``note``: remember the version as seen (rollback protection;
    not by a dry run or a look inside, which write nothing)."""
    await conn.send(m.ManifestRequest(name, version))
    reply = await conn.receive()
    if not isinstance(reply, m.ManifestResponse):
        raise RemoteProtocolError("expected a manifest")
    manifest = verify(reply.envelope)
    refusal = publisher_refusal(home, manifest, accept or Accept())
    if refusal is not None:
        raise refusal
    if manifest.name != name or (version is not None and manifest.version != version):
        raise ManifestError(f"peer answered with {manifest.name}@{manifest.version}")
    home.catalog.check_not_rollback(manifest, asked_latest=version is None)
    same = home.catalog.find(manifest.name, manifest.version, manifest.publisher.key)
    if same is not None and same.root != manifest.root:
        raise ManifestError(
            f"{manifest.publisher.short} signed two different {manifest.name}"
            f"@{manifest.version}; refusing this one"
        )
    if note:
        home.catalog.note_seen(manifest)
    return manifest, reply.envelope


IN_PROGRESS: Final = "in-progress"  # the feature (wire/features.py)
PROGRESS_WAIT: Final = "progress-wait"  # the feature of the long poll


async def await_progress(conn: PeerConnection, name: str, after: int, timeout: float) -> int:
    """Long-poll ``conn`` (feature "progress-wait") until the in-progress
    sequence it offers for ``name`` is not ``after`` (0: none offered);
    returns the new one (0: none, e.g. published whole). Only a hint to
    look again: what is taken is asked for and checked as always, so the
    answer is checked no further than its signature. Raises TransferError
    when no answer comes within ``timeout``."""
    await conn.send(m.ProgressRequest(name, after))
    try:
        reply = await conn.receive(idle_timeout=timeout)
    except NotFound:
        return 0
    if not isinstance(reply, m.ManifestResponse):
        raise RemoteProtocolError("expected an in-progress manifest")
    sequence = verify_in_progress(reply.envelope).in_progress
    return sequence or 0


async def fetch_in_progress(
    home: Home, conn: PeerConnection, name: str, accept: Accept
) -> tuple[Manifest, bytes] | None:
    """Ask ``conn`` for the in-progress manifest of ``name`` (issue 21), if
    the peer speaks the feature; None if it writes no version of it now.
    Checked as a manifest is (signature under the in-progress context,
    publisher accepted, the name asked for, paths), and it must be a
    directory version. Never noted as seen: it moves no rollback mark."""
    if IN_PROGRESS not in conn.features:
        return None
    await conn.send(m.ProgressRequest(name))
    try:
        reply = await conn.receive()
    except NotFound:
        return None
    if not isinstance(reply, m.ManifestResponse):
        raise RemoteProtocolError("expected an in-progress manifest")
    manifest = verify_in_progress(reply.envelope)
    refusal = publisher_refusal(home, manifest, accept)
    if refusal is not None:
        raise refusal
    if manifest.name != name or manifest.kind != "dir":
        raise ManifestError(f"peer answered with {manifest.name}@{manifest.version} in progress")
    return manifest, reply.envelope


async def choose_in_progress(
    home: Home, conns: list[PeerConnection], name: str, accept: Accept, above: int | None
) -> Offer | None:
    """The newest in-progress manifest of ``name`` above version ``above``
    that the peers offer, with the peers offering exactly it as sources;
    None if there is none. Takes ownership of ``conns`` (the others are
    closed). Refusals are logged, never raised: a follower falls back to
    waiting for the finished version."""
    offers: dict[int, tuple[Manifest, bytes]] = {}

    async def ask(conn: PeerConnection) -> None:
        try:
            got = await fetch_in_progress(home, conn, name, accept)
        except P2pckptError as exc:
            log.info('in-progress refused peer=%s error="%s"', conn.label, exc)
            return
        if got is not None and (above is None or got[0].version > above):
            offers[id(conn)] = got

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(ask, conn)
    best = max(offers.values(), key=lambda o: (o[0].version, o[0].in_progress), default=None)
    sources: dict[PeerId, Source] = {}
    for conn in conns:
        got = offers.get(id(conn))
        if best is not None and got is not None and got[0].root == best[0].root:
            src = sources.setdefault(conn.peer, Source(conn.peer, [], conn.route, conn.label))
            src.conns.append(conn)
        else:
            await conn.aclose()
    if best is None:
        return None
    return Offer(best[0], best[1], list(sources.values()), accept)


@dataclass
class Offer:
    """The version chosen for a pull and the peers offering exactly it;
    ``unreached``: the peers the pull tried and could not reach, and why
    (``Finder.unreached``), named if no source left holds some file."""

    manifest: Manifest
    envelope: bytes
    sources: list[Source]
    accept: Accept = field(default_factory=Accept)
    unreached: list[str] = field(default_factory=list)

    async def aclose(self) -> None:
        for src in self.sources:
            for conn in src.conns:
                await conn.aclose()


async def choose_source(
    home: Home,
    conns: list[PeerConnection],
    name: str,
    version: int | None,
    accept: Accept | None = None,
    note: bool = True,
) -> Offer:
    """Ask every connected peer for ``name``; keep the newest version signed by
    a publisher ``accept`` takes, and every peer offering exactly that version
    as a source (in ``conns`` order; connections to the same peer are grouped).
    The other connections are closed. If nobody qualifies, the most telling
    error is raised; so is one publisher's equivocation (two manifests for
    one name@version), two publishers' different newest versions under one
    number, and an expired newest version."""
    accept = accept or Accept()
    started = time.time()  # the fixed start of this update
    offers: dict[int, tuple[Manifest, bytes]] = {}
    errors: list[P2pckptError] = []

    async def ask(conn: PeerConnection) -> None:
        try:
            offers[id(conn)] = await fetch_manifest(home, conn, name, version, accept, note)
        except P2pckptError as exc:
            log.log(
                poll_level("peer skipped", conn.peer, str(exc)),
                'peer skipped peer=%s error="%s"',
                conn.label,
                exc,
            )
            errors.append(exc)

    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(ask, conn)
        if not offers:
            # A refusal that says something (signature, rollback, trust) beats "not found".
            errors.sort(key=lambda e: isinstance(e, NotFound))
            raise errors[0] if errors else NotFound(f"no peer offers {name}")
        offered = [(c, offers[id(c)][0]) for c in conns if id(c) in offers]
        _refuse_equivocation(offered)
        manifest, envelope = max(
            (offers[id(c)] for c, _ in offered), key=lambda o: o[0].version
        )  # first of the newest
        _refuse_ambiguous(offered, manifest)
        _check_expiry(manifest, version is None, accept, started)
    except BaseException:
        for conn in conns:
            await conn.aclose()
        raise
    sources: dict[PeerId, Source] = {}
    for conn in conns:
        offer = offers.get(id(conn))
        if offer is not None and offer[0].root == manifest.root:
            src = sources.setdefault(conn.peer, Source(conn.peer, [], conn.route, conn.label))
            src.conns.append(conn)
        else:
            await conn.aclose()
    return Offer(manifest, envelope, list(sources.values()), accept)


def _refuse_equivocation(offered: list[tuple[PeerConnection, Manifest]]) -> None:
    """Two valid manifests from one publisher for one name@version, offered
    at once: one of them is a lie or a stolen key; take neither (R-20)."""
    first: dict[tuple[bytes, int], tuple[PeerConnection, Manifest]] = {}
    for conn, manifest in offered:
        key = (manifest.publisher.key, manifest.version)
        seen = first.setdefault(key, (conn, manifest))
        if seen[1].root != manifest.root:
            raise Equivocation(
                f"{manifest.publisher.short} signed two different {manifest.name}"
                f"@{manifest.version}: {seen[0].label} offers {seen[1].root.hex()[:16]},"
                f" {conn.label} offers {manifest.root.hex()[:16]}; refusing both (is that"
                " publisher's key stolen? 'p2pckpt trust rm' it)"
            )


def _refuse_ambiguous(offered: list[tuple[PeerConnection, Manifest]], newest: Manifest) -> None:
    """Different publishers' versions under the same newest number: which one
    is meant is the user's choice (``--publisher``), not the first to answer."""
    rivals = {
        m_.publisher.short
        for _, m_ in offered
        if m_.version == newest.version and m_.publisher != newest.publisher
    }
    if rivals:
        raise ManifestError(
            f"{newest.name}@{newest.version} is offered by more than one publisher"
            f" ({', '.join(sorted({newest.publisher.short, *rivals}))}): choose one with"
            " --publisher (or a follow's publishers)"
        )


def _check_expiry(manifest: Manifest, latest: bool, accept: Accept, started: float) -> None:
    """Refuse an expired newest version (a frozen or withheld feed, R-21);
    an exact version asked for by number is only warned about."""
    expires = manifest.expires
    if expires is None or expires > started:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    what = f"{manifest.name}@{manifest.version} (signed by {manifest.publisher.short})"
    if latest and not accept.allow_expired:
        raise Expired(
            f"{what}, the newest version offered, expired at {when}: its publisher must publish"
            " again (or pass --allow-expired to take it anyway)"
        )
    log.warning(
        'version expired name=%s version=%d expired="%s" (taken anyway)',
        manifest.name,
        manifest.version,
        when,
    )
