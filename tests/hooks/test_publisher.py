"""The framework-free part of the hooks: imports stay lazy, arguments fail early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p2pckpt.errors import ConfigError
from p2pckpt.hooks import CheckpointPublisher, checkpoint_format

HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers", "accelerate")


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_p2pckpt_and_its_hooks_package_loads_no_ml_library() -> None:
    out = python(
        "import sys, p2pckpt, p2pckpt.hooks; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "hidden", "hint"),
    [
        (
            "p2pckpt.hooks.lightning",
            ("lightning", "lightning.pytorch", "pytorch_lightning"),
            "pip install lightning",
        ),
        ("p2pckpt.hooks.hf", ("transformers",), "pip install transformers accelerate"),
    ],
)
def test_a_missing_framework_says_what_to_install(
    module: str, hidden: tuple[str, ...], hint: str
) -> None:
    """``sys.modules[name] = None`` makes ``import name`` fail as if not installed."""
    out = python(f"import sys; sys.modules.update(dict.fromkeys({hidden!r})); import {module}")
    assert out.returncode == 1
    assert "ImportError" in out.stderr and hint in out.stderr


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad name"}, "bad checkpoint name"),
        ({"name": "ok", "meta": {"step": "1"}}, "filled in by the hook"),
        ({"name": "ok", "meta": {"lr": [0.1]}}, "string, int, float or bool"),
        ({"name": "ok", "meta": {"k": "x" * 2000}}, "longer than"),
        ({"name": "ok", "replicas": -1}, "replicas"),
        ({"name": "ok", "replicas_timeout": 0}, "replicas_timeout"),
        ({"name": "ok", "multi_host": True, "replicas": 1}, "not supported with multi_host"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CheckpointPublisher(**kwargs)  # type: ignore[arg-type]


def test_no_path_is_only_for_a_rank_of_a_multi_host_job() -> None:
    """``publish(None, step)`` means "this rank holds no files": multi_host only."""
    with pytest.raises(ConfigError, match="only with multi_host"):
        CheckpointPublisher("ok").publish(None, 1)


def test_format_is_the_weights_extension(tmp_path: Path) -> None:
    (tmp_path / "a.CKPT").write_bytes(b"x")
    hf = tmp_path / "checkpoint-2"
    hf.mkdir()
    for name in ("optimizer.pt", "rng_state.pth", "pytorch_model.bin", "trainer_state.json"):
        (hf / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "README").write_bytes(b"x")
    assert checkpoint_format(tmp_path / "a.CKPT") == "ckpt"
    assert checkpoint_format(hf) == "pytorch"
    (hf / "model.safetensors").write_bytes(b"x")
    assert checkpoint_format(hf) == "safetensors"
    assert checkpoint_format(tmp_path / "empty") == "unknown"
    assert checkpoint_format(tmp_path / "README") == "unknown"
