"""PyTorch Lightning: publish every checkpoint ``ModelCheckpoint`` writes.

    from lightning.pytorch.callbacks import ModelCheckpoint
    from p2pckpt.hooks.lightning import P2pckptCallback

    trainer = Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=500, save_top_k=-1),
                                 P2pckptCallback("llama-ft", meta={"base": "llama"})])

How it finds the files, and why this way. Lightning has no public hook that
runs after a checkpoint file is written: ``on_save_checkpoint`` runs while the
checkpoint dict is being built, before the write, and Lightning runs every
``Checkpoint`` callback after all other callbacks within a hook. So the
callback looks, using public attributes only:

* ``on_save_checkpoint`` records ``trainer.global_step`` of each save (the
  step is the version; this holds whatever order the callbacks run in);
* at the start of the next ``on_train_batch_end``, ``on_validation_end``,
  ``on_train_epoch_end`` or ``on_fit_end`` (the hooks in which
  ``ModelCheckpoint`` saves, so at most one step's saves lie in between) it
  reads each checkpoint callback's ``best_k_models``, ``best_model_path`` and
  ``last_model_path`` and publishes every file or directory there that it
  has not seen before (by path, inode, size and mtime, so a ``last.ckpt``
  rewritten in place counts as new).

A file therefore goes out at the next of those hooks (the next batch at the
latest, and always before ``fit`` returns), on global rank zero only, once
the save (and its barrier, so every rank's shards) is done. One version per
step: if a step wrote several files (a top-k file and ``last.ckpt``), the
first is published and the rest are skipped; links (``save_last="link"``)
are skipped as their target is published itself.
Files listed when training starts (restored by a resumed run) are left alone.
Not published: saves made by ``ModelCheckpoint(save_on_exception=True)``
(training stops in that hook), files outside the local filesystem, and
anything saved through ``AsyncCheckpointIO``, which is refused at setup
because its files appear later than the save's step says.

Lightning calls callback hooks by name and the attributes above are read by
name, so the callback works in a Trainer from ``lightning.pytorch`` or from
``pytorch_lightning``; its base class comes from whichever is already
imported, else installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pckpt.errors import ConfigError
from p2pckpt.hooks import CheckpointPublisher

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _lightning() -> Any:
    """The Lightning package the trainer most likely comes from: one already
    imported, else ``lightning.pytorch``, else ``pytorch_lightning``."""
    for name in sorted(_PACKAGES, key=lambda n: n not in sys.modules):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        "p2pckpt.hooks.lightning needs PyTorch Lightning: pip install lightning "
        "(or pytorch-lightning)"
    )


if TYPE_CHECKING:
    from pytorch_lightning import Callback, LightningModule, Trainer
else:
    Callback = _lightning().Callback

__all__ = ["P2pckptCallback"]

log = logging.getLogger("p2pckpt.hooks")

# A file as seen once: path, device, inode, size, mtime.
_Identity = tuple[str, int, int, int, int]


class P2pckptCallback(Callback):
    """Publishes each checkpoint that the trainer's ``ModelCheckpoint``
    callbacks save as ``name@global_step``, with meta ``step``, ``format``
    and ``meta``. ``home``: the node home (default ``$P2PCKPT_HOME``).
    ``replicas``/``replicas_timeout``: wait for that many trusted peers to
    hold a verified copy. ``raise_errors=False``: a failed publish is a
    warning and training goes on. See the module docstring for how files
    are found."""

    def __init__(
        self,
        name: str,
        *,
        home: str | Path | None = None,
        meta: Mapping[str, str] | None = None,
        replicas: int = 0,
        replicas_timeout: float = 600.0,
        raise_errors: bool = True,
    ) -> None:
        super().__init__()
        self.publisher = CheckpointPublisher(
            name,
            home=home,
            meta=meta,
            replicas=replicas,
            replicas_timeout=replicas_timeout,
            raise_errors=raise_errors,
        )
        self._save_steps: list[int] = []  # global_step of each save since the last look
        self._seen: set[_Identity] = set()
        self._seen_paths: set[str] = set()
        self._published: dict[int, str] = {}  # step -> path published for it

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        io = trainer.strategy.checkpoint_io
        if any(c.__name__ == "AsyncCheckpointIO" for c in type(io).__mro__):
            raise ConfigError(
                "P2pckptCallback cannot tell which step an AsyncCheckpointIO file belongs to; "
                "use synchronous checkpointing"
            )
        if not trainer.checkpoint_callbacks:
            log.warning("no ModelCheckpoint callback: nothing will be published")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After a resume has restored the checkpoint callbacks' state: the
        # files listed there now were saved (and published) by an earlier run.
        self._save_steps.clear()
        if trainer.is_global_zero:
            self._fresh(trainer)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._save_steps.append(trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._look(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def _candidates(self, trainer: Trainer) -> Iterator[str]:
        """Paths the checkpoint callbacks hold, top-k before ``last``."""
        for cb in trainer.checkpoint_callbacks:
            for path in getattr(cb, "best_k_models", {}):
                if str(path) not in self._seen_paths:  # top-k paths are new files
                    yield str(path)
            for attr in ("best_model_path", "last_model_path"):  # may be rewritten in place
                path = getattr(cb, attr, "")
                if path:
                    yield str(path)

    def _fresh(self, trainer: Trainer) -> list[str]:
        """Candidate files and directories not seen before (links skipped)."""
        fresh = []
        for path in self._candidates(trainer):
            try:
                st = os.lstat(path)
            except OSError:  # not written yet, removed, or not on a local filesystem
                continue
            ident = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if ident in self._seen:
                continue
            self._seen.add(ident)
            self._seen_paths.add(path)
            if not stat.S_ISLNK(st.st_mode):
                fresh.append(path)
        return fresh

    def _look(self, trainer: Trainer) -> None:
        steps, self._save_steps = self._save_steps, []
        if not trainer.is_global_zero:
            return
        fresh = self._fresh(trainer)
        if not fresh:
            return
        if not steps:  # no save of ours wrote them
            log.debug("not published paths=%s: no save since the last look", fresh)
            return
        if len(set(steps)) > 1:  # not with ModelCheckpoint alone: saves by hand, or in other hooks
            log.warning("ambiguous step steps=%s version=%d paths=%s", steps, steps[-1], fresh)
        step = steps[-1]
        for path in fresh:
            if step in self._published:  # e.g. last.ckpt beside the step's top-k file
                log.debug("skipped path=%s version=%d from=%s", path, step, self._published[step])
                continue
            if self.publisher.publish(path, step) is not None:
                self._published[step] = path
