"""Training hooks: publish each checkpoint a trainer saves, as ``name@step``.

* ``p2pckpt.hooks.lightning.P2pckptCallback`` for PyTorch Lightning;
* ``p2pckpt.hooks.hf.P2pckptTrainerCallback`` for the Hugging Face Trainer;
* ``CheckpointPublisher`` (here) for a hand-written training loop.

Importing this package imports no torch, Lightning or transformers: each
framework's module imports its framework, and only when it is imported
itself. The callbacks call ``p2pckpt.api.publish`` from the training process
(hashing in place at disk speed, no copy); a ``p2pckpt serve`` or daemon on
the same home serves what they publish. See ``docs/training-hooks.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from p2pckpt.errors import ConfigError, ManifestError
from p2pckpt.manifest.manifest import (
    MAX_META,
    MetaValue,
    validate_name,
)

if TYPE_CHECKING:
    from p2pckpt.api import PublishResult

__all__ = ["CheckpointPublisher", "checkpoint_format"]

log = logging.getLogger("p2pckpt.hooks")

# The meta keys the hooks fill in themselves.
RESERVED_META = frozenset({"step", "format"})

# For a directory, the first of these suffixes present names its format: the
# weights' format wins over side files (an HF checkpoint holds model.safetensors
# or pytorch_model.bin beside optimizer.pt and rng_state.pth).
_DIR_FORMATS = ("safetensors", "gguf", "bin", "ckpt", "pt", "pth", "distcp", "h5", "onnx")


def checkpoint_format(path: str | Path) -> str:
    """``format`` meta for a checkpoint, named as ``publish`` names it
    (``ckpt``, ``pytorch``, ``safetensors``...): a file's extension, or for a
    directory the weights' found in it (not the trainer's ``optimizer.pt``
    beside ``model.safetensors``); ``unknown`` if there is none."""
    from p2pckpt.publish import FORMATS  # the names `publish` and `ls` use

    p = Path(path)
    if p.is_dir():
        found = {f.rpartition(".")[2].lower() for _, _, files in os.walk(p) for f in files}
        ext = next((fmt for fmt in _DIR_FORMATS if fmt in found), "unknown")
    else:
        ext = p.suffix[1:].lower() or "unknown"
    return FORMATS.get(f".{ext}", ext)


class CheckpointPublisher:
    """Publishes checkpoint paths as ``name@step`` with ``step`` and ``format``
    meta, and decides what a failure does: by default it is logged and raised
    (training stops rather than silently not sharing checkpoints); with
    ``raise_errors=False`` it is logged as a warning and training goes on.

    ``replicas > 0`` makes each publish wait, up to ``replicas_timeout``
    seconds, until that many trusted peers hold a verified copy (the training
    loop is blocked meanwhile). Arguments are checked here, so a bad name
    fails before the first hour of training rather than after it.

    ``multi_host=True`` (issue 21 item 2): every rank of a ``torch.distributed``
    job calls ``publish`` with the directory of its own files on its own disk
    (``None`` for a rank with none), and one version signed by rank 0's key
    covers them all; each rank's home records and serves its own files
    (``hooks/distributed.py``). Each rank needs its own home (``home``, or
    ``P2PCKPT_HOME`` set per node), rank 0's holding the publisher key.
    """

    def __init__(
        self,
        name: str,
        *,
        home: str | Path | None = None,
        meta: Mapping[str, MetaValue] | None = None,
        replicas: int = 0,
        replicas_timeout: float = 600.0,
        raise_errors: bool = True,
        multi_host: bool = False,
    ) -> None:
        try:
            validate_name(name)
        except ManifestError as exc:
            raise ConfigError(str(exc)) from None
        user_meta = dict(meta or {})
        reserved = sorted(RESERVED_META & user_meta.keys())
        if reserved:
            raise ConfigError(f"meta {reserved} is filled in by the hook; leave it out")
        if len(user_meta) > MAX_META - len(RESERVED_META):
            raise ConfigError(f"at most {MAX_META - len(RESERVED_META)} meta entries")
        from p2pckpt.publish import wire_meta  # the manifest's own limits

        wire_meta(user_meta)
        if replicas < 0:
            raise ConfigError("replicas is a count of peers, 0 or more")
        if replicas_timeout <= 0:
            raise ConfigError("replicas_timeout is a number of seconds above 0")
        if multi_host and replicas:
            raise ConfigError("replicas is not supported with multi_host yet")
        self.name = name
        self.home = home
        self.meta = user_meta
        self.replicas = replicas
        self.replicas_timeout = replicas_timeout
        self.raise_errors = raise_errors
        self.multi_host = multi_host

    def publish(self, path: str | Path | None, step: int) -> PublishResult | None:
        """Publish ``path`` as ``name@step``; ``None`` if it failed and
        ``raise_errors`` is off. Blocking: hashes the files in place. With
        ``multi_host``, a collective: every rank calls it (``path`` None:
        this rank holds no files) and gets the same result or error."""
        from p2pckpt.api import publish

        meta: dict[str, MetaValue] = {**self.meta, "step": str(step)}
        if not self.multi_host:
            if path is None:
                raise ConfigError("a path to publish is needed (None only with multi_host)")
            meta["format"] = checkpoint_format(path)
        try:
            if self.multi_host:
                from p2pckpt.hooks.distributed import publish_gathered

                manifest = publish_gathered(
                    path, name=self.name, version=step, meta=meta, home=self.home
                )
            else:
                assert path is not None
                manifest = publish(
                    path,
                    name=self.name,
                    version=step,
                    meta=meta,
                    home=self.home,
                    replicas=self.replicas,
                    replicas_timeout=self.replicas_timeout,
                )
        except Exception as exc:
            if self.raise_errors:
                log.error(
                    'publish failed name=%s version=%d path=%s error="%s"',
                    self.name,
                    step,
                    path,
                    exc,
                )
                raise
            log.warning(
                'publish failed name=%s version=%d path=%s error="%s" (training goes on)',
                self.name,
                step,
                path,
                exc,
            )
            return None
        log.info("published name=%s version=%d path=%s", self.name, step, path)
        return manifest
