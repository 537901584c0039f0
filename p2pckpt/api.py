"""The Python API: publish and pull from a training script, no daemon needed.

    import p2pckpt

    for step in range(0, total_steps, 1000):
        ...train...
        torch.save(model.state_dict(), f"ckpt/step-{step}.pt")
        p2pckpt.publish(f"ckpt/step-{step}.pt", name="llama-ft", version=step,
                        meta={"loss": round(loss, 4)})

    result = p2pckpt.pull("llama-ft", dest="./llama-ft")      # newest, found by itself

    p2pckpt.publish("ckpt/step-9000", name="llama-ft", replicas=2)  # safe on 2 peers

Both use the node home of ``home=`` (default: ``$P2PCKPT_HOME`` or the user
data dir) and raise ``p2pckpt.errors.P2pckptError`` subclasses on failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.errors import ConfigError, P2pckptError, first_leaf
from p2pckpt.home import Home, default_home
from p2pckpt.manifest.manifest import Manifest, MetaValue
from p2pckpt.transfer.pull import DEFAULT_STREAMS, PullResult

__all__ = ["PublishResult", "PullResult", "publish", "pull"]


@dataclass(frozen=True)
class PublishResult:
    """What ``publish`` made: ``root`` is the signed manifest's BLAKE3 root (hex),
    ``files`` the number of files, ``bytes`` their total size, ``publisher``
    this node's peer ID."""

    name: str
    version: int
    root: str
    files: int
    bytes: int
    publisher: str
    expires: int | None = None

    @classmethod
    def of(cls, manifest: Manifest) -> PublishResult:
        return cls(
            name=manifest.name,
            version=manifest.version,
            root=manifest.root.hex(),
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            publisher=str(manifest.publisher),
            expires=manifest.expires,
        )


def _home(home: str | Path | None) -> Home:
    return Home.open(Path(home) if home is not None else default_home())


def publish(
    path: str | Path,
    *,
    name: str,
    version: int | None = None,
    meta: Mapping[str, MetaValue] | None = None,
    home: str | Path | None = None,
    replicas: int = 0,
    replicas_timeout: float = 600.0,
    config: str | Path | None = None,
    expires_in: float | None = None,
) -> PublishResult:
    """Hash ``path`` (a file or a directory) in place and publish it as
    ``name@version`` (default: newest + 1). Republishing identical bytes is a
    no-op. Blocking; hashing runs at disk speed.

    ``meta`` values are strings, ints (64-bit), finite floats or bools, at most
    64 entries, keys up to 64 printable characters, values up to 1024 once
    written out; they come back typed in ``p2pckpt ls --json`` (here and on
    the peers that list this version; see ``manifest.encode_meta`` for how
    older nodes see them).

    ``expires_in`` (seconds) signs an expiry into the manifest: pullers and
    followers refuse it as the newest version after that.

    With ``replicas=K``, return only once K trusted peers (found as for a
    pull) hold a verified copy; ``p2pckpt.errors.ReplicasMissing`` after
    ``replicas_timeout`` seconds, its ``report`` naming who has it. A daemon
    must serve this home meanwhile, or nobody can fetch the new version."""
    from p2pckpt.publish import publish as do_publish

    if replicas < 0:
        raise ConfigError("replicas is a count of peers, 0 or more")
    opened = _home(home)
    try:
        expires = None
        if expires_in is not None:
            if not expires_in > 0:
                raise ConfigError("expires_in is a number of seconds, more than 0")
            import time

            expires = int(time.time() + expires_in)
        manifest = do_publish(opened, Path(path), name, version, meta, expires=expires)
        if replicas:
            import trio

            from p2pckpt.config import load
            from p2pckpt.replicas import wait_for_replicas

            cfg = load(opened.path, Path(config) if config is not None else None)
            try:
                trio.run(wait_for_replicas, opened, cfg, manifest, replicas, replicas_timeout)
            except BaseExceptionGroup as group:
                leaf = first_leaf(group)
                if isinstance(leaf, P2pckptError):
                    raise leaf from group
                raise
        return PublishResult.of(manifest)
    finally:
        opened.catalog.close()


def pull(
    name: str,
    dest: str | Path | None = None,
    *,
    version: int | None = None,
    sources: Sequence[str] = (),
    streams: int = DEFAULT_STREAMS,
    home: str | Path | None = None,
    config: str | Path | None = None,
) -> PullResult:
    """Pull ``name`` (newest, or ``version``) into ``dest``; returns once every
    byte is verified. ``dest`` is taken as ``p2pckpt pull -o`` takes it (an
    existing directory as ``cp`` does; a string ending in ``/`` means "into").
    ``sources``: ``HOST:PORT``, peer IDs or trusted names;
    empty means find trusted peers (mDNS, static peers, relay). Blocking."""
    import trio

    from p2pckpt.config import load
    from p2pckpt.discovery.finder import connect_targets, parse_targets
    from p2pckpt.transfer.pull import pull as do_pull

    opened = _home(home)
    cfg = load(opened.path, Path(config) if config is not None else None)
    targets = parse_targets(sources, opened)
    into = isinstance(dest, str) and dest.endswith(("/", os.sep))

    async def run() -> PullResult:
        unreached: list[str] = []
        conns = await connect_targets(opened, cfg, targets, unreached)
        return await do_pull(
            opened,
            conns,
            name,
            version,
            Path(dest) if dest is not None else None,
            streams,
            into=into,
            unreached=unreached,
        )

    try:
        return trio.run(run)
    except BaseExceptionGroup as group:
        leaf = first_leaf(group)
        if isinstance(leaf, P2pckptError):
            raise leaf from group
        raise
    finally:
        opened.catalog.close()
