"""Pull a version into a Hugging Face hub cache (``pull --into-hf-cache``).

The version is pulled and verified like any other, into a folder inside the
repository's cache folder (same file system), then moved into the cache
layout by ``hfcache.lay_out``; the catalog then points at the snapshot, so
the node serves it from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import time
from pathlib import Path

import trio

from p2pckpt.errors import ConfigError, P2pckptError, StoreError
from p2pckpt.home import Home
from p2pckpt.interop import hfcache
from p2pckpt.store.verify import compare
from p2pckpt.transfer.pull import (
    DEFAULT_STREAMS,
    Offer,
    Progress,
    PullResult,
    pull_offer,
    pull_result,
)
from p2pckpt.transfer.throttle import Throttle

MARKER = ".p2pckpt"  # in a repo folder that p2pckpt created


def repo_for(offer: Offer, repo_id: str | None) -> str:
    """The repo id to file the version under: given, or the publisher's."""
    chosen = repo_id or offer.manifest.meta.get("hf_repo")
    if not chosen:
        raise ConfigError(
            f"{offer.manifest.name}@{offer.manifest.version} was not published from a Hugging"
            " Face cache; name its repo with --hf-repo ORG/NAME"
        )
    return hfcache.parse_repo(chosen)[0]


def _open_repo(cache: Path, repo_id: str, chosen_by_user: bool) -> tuple[Path, int]:
    """The repo folder, created if need be, and a lock held on it. A folder
    p2pckpt did not create is only added to when the user named the repo:
    the publisher's ``hf_repo`` alone may not add to what came from the hub."""
    repo = hfcache.repo_dir(cache, repo_id)
    if repo.exists() and not (repo / MARKER).exists() and not chosen_by_user:
        raise ConfigError(
            f"{repo} was not made by p2pckpt; add this version to it only by naming the repo"
            f" yourself: --hf-repo {repo_id}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        repo.mkdir(mode=0o755)
        (repo / MARKER).touch()
    hfcache.check_folder(repo)
    fd = os.open(repo / MARKER if (repo / MARKER).exists() else repo, os.O_RDONLY | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_EX)  # one layout at a time (daemon and CLI alike)
    return repo, fd


async def pull_into_cache(
    home: Home,
    offer: Offer,
    cache: Path,
    repo_id: str | None = None,
    streams: int = DEFAULT_STREAMS,
    progress: Progress | None = None,
    throttles: list[Throttle] | None = None,
) -> PullResult:
    """Pull ``offer`` into ``cache`` (an absolute path) so that
    ``huggingface_hub`` finds it offline. Takes ownership of the offer's
    connections."""
    started = time.monotonic()
    manifest, envelope = offer.manifest, offer.envelope
    lock = -1
    try:
        chosen = repo_for(offer, repo_id)
        repo, lock = await trio.to_thread.run_sync(_open_repo, cache, chosen, repo_id is not None)
        snapshot = repo / "snapshots" / hfcache.commit_for(manifest)
        # For a one-file checkpoint the catalog points at the link itself.
        where = snapshot / manifest.files[0].path if manifest.kind == "file" else snapshot
        if snapshot.is_dir():
            differs = await trio.to_thread.run_sync(compare, where, manifest)
            if not differs.missing and not differs.damaged:  # others' extra files are fine
                await offer.aclose()
                await trio.to_thread.run_sync(
                    hfcache.point_ref, repo, hfcache.branch_for(manifest), snapshot.name
                )
                home.catalog.add(manifest, envelope, where, "pulled")
                return pull_result(manifest, where, 0, manifest.total_bytes, offer.sources, started)
        incoming = repo / f".p2pckpt-incoming-{manifest.root.hex()[:16]}"
        if any(e.root == manifest.root for e in home.catalog.at_location(incoming)):
            differs = await trio.to_thread.run_sync(compare, incoming, manifest)
            if differs:  # a layout cut short by a crash: some files are blobs already
                home.catalog.forget_location(incoming)
                await trio.to_thread.run_sync(_discard, incoming)  # pull afresh
    except BaseException:
        await offer.aclose()
        if lock >= 0:
            os.close(lock)
        raise
    try:
        result = await pull_offer(
            home, offer, incoming, streams, progress, throttles=throttles, started=started
        )
        try:
            await trio.to_thread.run_sync(hfcache.lay_out, repo, incoming, manifest)
        except (OSError, P2pckptError) as exc:
            # Refused (a link naming other bytes) or failed: the cache is as it
            # was, and no hidden copy is left in it.
            home.catalog.forget_location(incoming)
            await trio.to_thread.run_sync(_discard, incoming)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot lay out {repo}: {exc}") from exc
            raise
        home.catalog.forget_location(incoming)  # its bytes are the snapshot's now
        home.catalog.add(manifest, envelope, where, "pulled")
        await trio.to_thread.run_sync(_discard, incoming)
    finally:
        os.close(lock)
    return dataclasses.replace(result, dest=str(where))


def _discard(incoming: Path) -> None:
    """Remove what the layout left of the incoming folder (empty folders, or
    files that were already the blobs' own links)."""
    if incoming.is_dir() and not incoming.is_symlink():
        shutil.rmtree(incoming)
    else:
        incoming.unlink(missing_ok=True)
