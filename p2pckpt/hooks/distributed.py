"""Multi-host publish inside a ``torch.distributed`` job (issue 21 item 2).

Every rank calls ``publish_gathered`` with the directory holding its own
files on its own disk (or ``None`` if it holds none: e.g. all ranks of a
node but one, when they share that node's directory and home); rank 0's
home holds the publisher key. The exchange runs on the job's own
collectives (``gather_object`` / ``broadcast_object_list``, gloo or NCCL
with a CPU-capable group), each step ending in one broadcast verdict so
every rank raises the same error and none is left waiting in a collective:

1. every rank hashes its files in place and sends rank 0 its entries;
2. rank 0 checks them (``manifest/gather.py``) and broadcasts a random seed;
3. every rank sends the bytes of the chunks the seed picks from its files
   (point to point, received one rank at a time: rank 0 never holds more
   than one rank's proof, at most PROOF_BYTES and a chunk);
4. rank 0 checks them, signs one manifest and broadcasts it;
5. every rank checks that its entries are in it unchanged and records its
   share in its own home's catalog: its serve or daemon offers those files.

Peers in one job are the job's own processes, not strangers on a network,
but what they send is still checked as untrusted input: a rank that lies
about its files (a bug, a disk swapped under it) is refused before signing.
Imports torch only when called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pckpt.errors import HostRefused, P2pckptError
from p2pckpt.manifest.gather import SEED_BYTES, Gather, pick_proof
from p2pckpt.manifest.manifest import FileEntry, MetaValue

if TYPE_CHECKING:
    from p2pckpt.api import PublishResult
    from p2pckpt.home import Home

log = logging.getLogger("p2pckpt.hooks")


class GatherFailed(P2pckptError):
    """A multi-host publish failed on some rank: every rank raises this."""

    exit_code = 7


def _verdict(dist: Any, rank: int, failure: str | None, payload: object = None) -> Any:
    """Rank 0's verdict (a failure, or the step's payload) on every rank."""
    box: list[object] = [(failure, payload)] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    got = box[0]
    assert isinstance(got, tuple)
    failure, payload = got
    if failure is not None:
        raise GatherFailed(str(failure))
    return payload


def _gather(dist: Any, rank: int, world: int, mine: object) -> list[Any]:
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(mine, out, dst=0)
    return out or []


def _first_error(reports: list[Any]) -> str | None:
    for report in reports:
        if not isinstance(report, dict):
            return "a rank sent something that is not a report"
        if report.get("error"):
            return f"{report.get('host', '?')}: {report['error']}"
    return None


def publish_gathered(
    path: str | Path | None,
    *,
    name: str,
    version: int,
    meta: Mapping[str, MetaValue] | None = None,
    home: str | Path | None = None,
) -> PublishResult:
    """Publish every rank's files as one version ``name@version`` signed by
    rank 0's key. A collective: every rank of the default group must call it.

    Raises:
        GatherFailed: on every rank, if any rank failed or was refused
            (nothing is signed or recorded anywhere then).
    """
    import torch.distributed as dist

    from p2pckpt.api import PublishResult, _home
    from p2pckpt.multihost.local import (
        local_entries,
        read_proof,
        record_share,
        sign_gathered,
        wire_of,
    )

    rank, world = dist.get_rank(), dist.get_world_size()
    opened: Home = _home(home)
    try:
        host = f"rank {rank} ({opened.key.peer_id.short})"
        root: Path | None = None
        mine: tuple[FileEntry, ...] = ()
        error = None
        try:
            if path is not None:
                root, mine = local_entries(opened, Path(path))
        except P2pckptError as exc:
            error = str(exc)
        # 1. entries in, checked on rank 0
        report = {"host": host, "entries": wire_of(mine) if mine else None, "error": error}
        reports = _gather(dist, rank, world, report)
        gather = Gather(name, version)
        failure = None
        seed = os.urandom(SEED_BYTES)
        if rank == 0:
            failure = _first_error(reports)
            try:
                for r in reports if failure is None else []:
                    if r["entries"] is not None:
                        gather.add(str(r["host"]), r["entries"])
                if failure is None and not gather.hosts:
                    failure = "no rank had files to publish"
                if failure is None:
                    gather.challenge(seed)
            except HostRefused as exc:
                failure = str(exc)
        # 2. the challenge
        seed = _verdict(dist, rank, failure, (seed, opened.key.peer_id.key))
        seed, publisher = seed
        # 3. proofs in, checked on rank 0
        proof: object = None
        error = None
        try:
            if root is not None:
                proof = read_proof(root, pick_proof(mine, seed, host))
        except P2pckptError as exc:
            error = str(exc)
        shown: Any = {"host": host, "proof": proof, "error": error}
        envelope = None
        if rank != 0:  # one rank's proof at a time on rank 0, not all of them at once
            dist.send_object_list([shown], dst=0)
        else:
            failure = None
            for r in range(world):
                if r:
                    box: list[object] = [None]
                    dist.recv_object_list(box, src=r)  # every rank's, even after a failure
                    shown = box[0]
                failure = failure or _first_error([shown])
                try:
                    if failure is None and str(shown["host"]) in gather.hosts:
                        gather.check_proof(str(shown["host"]), shown["proof"])
                except P2pckptError as exc:
                    failure = str(exc)
            try:
                if failure is None:
                    _, envelope = sign_gathered(opened, gather, meta)
            except P2pckptError as exc:
                failure = str(exc)
        # 4. the signed version, recorded by each rank as its share
        envelope = _verdict(dist, rank, failure, envelope)
        error = None
        manifest = None
        try:
            if root is not None:
                manifest = record_share(opened, envelope, root, mine, publisher)
        except P2pckptError as exc:
            error = f"{host}: {exc}"
        # 5. every rank knows whether every share was recorded
        done = _gather(dist, rank, world, error)
        failure = next((e for e in done if e), None) if rank == 0 else None
        _verdict(dist, rank, failure)
        if manifest is None:
            from p2pckpt.manifest.manifest import verify

            manifest = verify(envelope)
        log.info(
            "published multi-host name=%s version=%d rank=%d files_here=%d",
            name,
            version,
            rank,
            len(mine),
        )
        return PublishResult.of(manifest)
    finally:
        opened.catalog.close()
