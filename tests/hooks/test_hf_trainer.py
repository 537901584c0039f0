"""The Hugging Face Trainer callback in a real Trainer on CPU (no network)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nodes import run, run_json

# Read by huggingface_hub and transformers at import time: nothing goes online.
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    DISABLE_TELEMETRY="1",
    DO_NOT_TRACK="1",
)
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch
import transformers

from p2pckpt.home import Home
from p2pckpt.hooks.hf import P2pckptTrainerCallback

NAME = "tiny-hf"


class Tiny(torch.nn.Module):
    """The smallest model the Trainer takes: forward returns the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)

    def forward(self, x: Any, labels: Any) -> dict[str, Any]:
        return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}


class Data(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 8, generator=g)
        self.y = torch.randn(16, 2, generator=g)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "labels": self.y[i]}


def train(out: Path, callback: P2pckptTrainerCallback) -> None:
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        save_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    transformers.Trainer(
        model=Tiny(), args=args, train_dataset=Data(), callbacks=[callback]
    ).train()


def init_home(path: Path) -> Path:
    run(path, "init")
    (path / "config.toml").write_text("[discovery]\nmdns = false\n")
    return path


def test_each_checkpoint_dir_is_published(tmp_path: Path) -> None:
    home = init_home(tmp_path / "home")
    out = tmp_path / "out"
    train(out, P2pckptTrainerCallback(NAME, home=home, meta={"base": "tiny"}))
    rows = sorted(
        (r for r in run_json(home, "ls", "--local") if r["name"] == NAME),
        key=lambda r: r["version"],
    )
    assert [r["version"] for r in rows] == [2, 4]
    opened = Home.open(home)
    try:
        for r in rows:
            step = r["version"]
            ckpt = out / f"checkpoint-{step}"
            assert r["meta"] == {"base": "tiny", "step": str(step), "format": "safetensors"}
            assert Path(r["location"]) == ckpt.absolute()
            entry = opened.catalog.find(NAME, step)
            assert entry is not None
            on_disk = {
                p.relative_to(ckpt).as_posix(): p.stat().st_size
                for p in ckpt.rglob("*")
                if p.is_file()
            }
            assert {f.path: f.size for f in entry.manifest().files} == on_disk
            assert "model.safetensors" in on_disk and "optimizer.pt" in on_disk
    finally:
        opened.catalog.close()


def test_a_failed_publish_stops_training_unless_told_not_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A home that was never initialised: the error is raised, or only logged."""
    missing = tmp_path / "no-home"
    with caplog.at_level(logging.WARNING, logger="p2pckpt.hooks"):
        with pytest.raises(ValueError, match="no node home"):
            train(tmp_path / "a", P2pckptTrainerCallback(NAME, home=missing))
        assert not (tmp_path / "a" / "checkpoint-4").exists()  # stopped at the first save
        train(tmp_path / "b", P2pckptTrainerCallback(NAME, home=missing, raise_errors=False))
    assert (tmp_path / "b" / "checkpoint-4").is_dir()
    logged = [
        (r.levelname, r.getMessage().split(" path=")[0])
        for r in caplog.records
        if r.name == "p2pckpt.hooks"
    ]
    assert logged == [
        ("ERROR", f"publish failed name={NAME} version=2"),
        ("WARNING", f"publish failed name={NAME} version=2"),
        ("WARNING", f"publish failed name={NAME} version=4"),
    ]
