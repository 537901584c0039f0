"""Pull a version into a Hugging Face hub cache (``pull --into-hf-cache``).

The version is pulled and verified like any other, into a folder inside the
repository's cache folder (same file system), then moved into the cache
layout by ``hfcache.lay_out``; the catalog then points at the snapshot, so
the node serves it from there.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import trio

from p2pckpt import hfcache
from p2pckpt.errors import ConfigError
from p2pckpt.home import Home
from p2pckpt.store.verify import compare
from p2pckpt.transfer.pull import (
    DEFAULT_STREAMS,
    Offer,
    Progress,
    PullResult,
    _result,  # one shape of result for every pull
    pull_offer,
)
from p2pckpt.transfer.throttle import Throttle


def repo_for(offer: Offer, repo_id: str | None) -> str:
    """The repo id to file the version under: given, or the publisher's."""
    chosen = repo_id or offer.manifest.meta.get("hf_repo")
    if not chosen:
        raise ConfigError(
            f"{offer.manifest.name}@{offer.manifest.version} was not published from a Hugging"
            " Face cache; name its repo with --hf-repo ORG/NAME"
        )
    return hfcache.parse_repo(chosen)[0]


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
    try:
        repo = hfcache.repo_dir(cache, repo_for(offer, repo_id))
        branch = manifest.meta.get("hf_ref", "main")
        if not hfcache.valid_ref(branch):
            branch = "main"
    except BaseException:
        await offer.aclose()
        raise
    snapshot = repo / "snapshots" / hfcache.commit_for(manifest)
    if snapshot.is_dir() and not await trio.to_thread.run_sync(compare, snapshot, manifest):
        await offer.aclose()
        await trio.to_thread.run_sync(hfcache.point_ref, repo, branch, snapshot.name)
        home.catalog.add(manifest, envelope, snapshot, "pulled")
        return _result(manifest, snapshot, 0, manifest.total_bytes, offer.sources, started)
    repo.mkdir(parents=True, exist_ok=True)
    incoming = repo / f".p2pckpt-incoming-{manifest.root.hex()[:16]}"
    if any(e.root == manifest.root for e in home.catalog.at_location(incoming)):
        differs = await trio.to_thread.run_sync(compare, incoming, manifest)
        if differs:  # a layout cut short by a crash: some files are blobs already
            home.catalog.forget_location(incoming)
            await trio.to_thread.run_sync(_discard, incoming)  # pull afresh
    result = await pull_offer(
        home, offer, incoming, streams, progress, throttles=throttles, started=started
    )
    snapshot = await trio.to_thread.run_sync(hfcache.lay_out, repo, incoming, manifest, branch)
    home.catalog.add(manifest, envelope, snapshot, "pulled")  # replaces the incoming row
    await trio.to_thread.run_sync(_discard, incoming)
    return dataclasses.replace(result, dest=str(snapshot))


def _discard(incoming: Path) -> None:
    """Remove what the layout left of the incoming folder (empty folders, or
    files that were already the blobs' own links)."""
    if incoming.is_dir() and not incoming.is_symlink():
        shutil.rmtree(incoming)
    else:
        incoming.unlink(missing_ok=True)
