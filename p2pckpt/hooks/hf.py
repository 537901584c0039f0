"""Hugging Face Trainer: publish every ``checkpoint-STEP`` directory it saves.

    from p2pckpt.hooks.hf import P2pckptTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[P2pckptTrainerCallback("llama-ft", meta={"base": "llama"})])

``on_save`` runs right after the Trainer wrote ``OUTPUT_DIR/checkpoint-STEP``
(model, optimizer, scheduler, RNG and trainer state) and rotated old ones
out (``save_total_limit``): the whole directory is published as
``name@STEP`` on the world's main process. Under ``torch.distributed`` every
process first meets at a barrier, so files written by other ranks
(DeepSpeed, FSDP shards) are complete before they are hashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:
    raise ImportError(
        "p2pckpt.hooks.hf needs the Hugging Face Trainer: pip install transformers accelerate"
    ) from exc

from p2pckpt.hooks import CheckpointPublisher

__all__ = ["P2pckptTrainerCallback"]


def _barrier() -> None:
    """Wait for every rank, when torch.distributed runs (else nothing)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class P2pckptTrainerCallback(TrainerCallback):
    """Publishes each checkpoint the Trainer saves as ``name@global_step``,
    with meta ``step``, ``format`` and ``meta``. ``home``: the node home
    (default ``$P2PCKPT_HOME``). ``replicas``/``replicas_timeout``: wait for
    that many trusted peers to hold a verified copy. ``raise_errors=False``:
    a failed publish is a warning and training goes on."""

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
        self.publisher = CheckpointPublisher(
            name,
            home=home,
            meta=meta,
            replicas=replicas,
            replicas_timeout=replicas_timeout,
            raise_errors=raise_errors,
        )

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        _barrier()
        if not state.is_world_process_zero:
            return
        output_dir = args.output_dir or "trainer_output"  # the Trainer's own default
        path = Path(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.publisher.publish(path, state.global_step)
