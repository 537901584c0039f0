"""The Lightning callback in a real Trainer on CPU, then a real seeder and pull."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nodes import Pair, make_pair, run, run_json

pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")

import pytorch_lightning as pl
import torch

from p2pckpt.errors import ConfigError
from p2pckpt.hooks.lightning import P2pckptCallback

NAME = "tiny-pl"

# Third-party warnings this torch + Lightning pair raises on every fit; the
# suite turns warnings into errors, so each is let through here by its text.
pytestmark = [
    # Lightning 2.6 builds torch.utils._pytree.LeafSpec, deprecated in torch 2.13
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> Any:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=4)  # 4 steps per epoch


def fit(
    root: Path, home: Path, checkpoint: Any, max_steps: int = 6, ckpt_path: str | None = None
) -> Any:
    torch.manual_seed(0)
    model = Tiny()
    trainer = pl.Trainer(
        max_steps=max_steps,
        callbacks=[P2pckptCallback(NAME, home=home, meta={"base": "tiny"}), checkpoint],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = make_pair(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def local_versions(home: Path) -> list[dict[str, Any]]:
    return sorted(
        (r for r in run_json(home, "ls", "--local") if r["name"] == NAME),
        key=lambda r: r["version"],
    )


def test_every_saved_step_is_published_and_pulls(pair: Pair, tmp_path: Path) -> None:
    ckdir = tmp_path / "ckpts"
    model = fit(
        tmp_path,
        pair.a,
        pl.callbacks.ModelCheckpoint(dirpath=ckdir, every_n_train_steps=2, save_top_k=-1),
    )
    rows = local_versions(pair.a)
    assert [r["version"] for r in rows] == [2, 4, 6]
    for r in rows:
        assert r["meta"] == {"base": "tiny", "step": str(r["version"]), "format": "ckpt"}
        assert r["origin"] == "published" and r["files"] == 1
        assert Path(r["location"]).name.endswith(f"step={r['version']}.ckpt")
    assert sorted(p.name for p in ckdir.iterdir()) == sorted(Path(r["location"]).name for r in rows)

    server = pair.serve_a()
    dest = tmp_path / "pulled"
    got = run_json(pair.b, "pull", NAME, "--from", server.addr, "-o", str(dest))
    assert got["version"] == 6
    original = Path(rows[-1]["location"])
    pulled = torch.load(dest, map_location="cpu", weights_only=False)
    want = torch.load(original, map_location="cpu", weights_only=False)
    assert pulled["global_step"] == 6
    assert pulled["state_dict"].keys() == want["state_dict"].keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(pulled["state_dict"][key], value)
        assert torch.equal(want["state_dict"][key], value)


# Resuming into the same directory is the point of this test.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_top_k_and_last_one_version_per_step_across_a_resume(tmp_path: Path) -> None:
    """A step that wrote a top-k file and last.ckpt is published once, from the
    top-k file; a resumed fit leaves the files of the first one alone."""
    home = tmp_path / "home"
    run(home, "init")
    ckdir = tmp_path / "ckpts"

    def checkpoint() -> Any:
        return pl.callbacks.ModelCheckpoint(
            dirpath=ckdir,
            every_n_train_steps=2,
            monitor="step",
            mode="max",
            save_top_k=2,
            save_last=True,
        )

    fit(tmp_path, home, checkpoint(), max_steps=4)
    fit(tmp_path, home, checkpoint(), max_steps=8, ckpt_path=str(ckdir / "last.ckpt"))
    rows = local_versions(home)
    assert [r["version"] for r in rows] == [2, 4, 6, 8]
    for r in rows:
        assert Path(r["location"]).name.endswith(f"step={r['version']}.ckpt")
        assert r["meta"]["step"] == str(r["version"])
    # Lightning keeps the top 2 and last.ckpt: the older versions' files are gone.
    assert sorted(p.name for p in ckdir.iterdir()) == [
        "epoch=1-step=6.ckpt",
        "epoch=1-step=8.ckpt",
        "last.ckpt",
    ]


def test_async_checkpoint_io_is_refused_before_training(tmp_path: Path) -> None:
    """Its files appear after the step that saved them: no guessing versions."""
    home = tmp_path / "home"
    run(home, "init")
    trainer = pl.Trainer(
        max_steps=2,
        callbacks=[P2pckptCallback(NAME, home=home)],
        plugins=[pl.plugins.io.AsyncCheckpointIO()],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="AsyncCheckpointIO"):
        trainer.fit(Tiny(), loader())
    assert trainer.global_step == 0
