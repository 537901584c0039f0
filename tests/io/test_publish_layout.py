"""Publishing a real safetensors file cuts chunks at tensors (issue 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pckpt.errors import ConfigError
from p2pckpt.home import Home
from p2pckpt.publish import publish
from tests.core.test_layout import model, safetensors


def test_publish_cuts_safetensors_at_tensors_and_keeps_data_chunks(tmp_path: Path) -> None:
    """Two versions whose headers differ in length share every data chunk;
    a file that only looks like safetensors by name gets fixed chunks."""
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(safetensors(model(), meta="v1"))
    (ck / "junk.safetensors").write_bytes(b"\xff" * (9 << 20))
    v1 = publish(home, ck, "layout", 1)
    (ck / "model.safetensors").write_bytes(safetensors(model(), meta="v2, a longer note"))
    v2 = publish(home, ck, "layout", 2)
    files1 = {f.path: f for f in v1.files}
    files2 = {f.path: f for f in v2.files}
    m1, m2 = files1["model.safetensors"], files2["model.safetensors"]
    assert m2.size == m1.size + len(", a longer note")
    assert [c.digest for c in m1.chunks[1:]] == [c.digest for c in m2.chunks[1:]]
    assert m1.chunks[1].offset == m1.chunks[0].length  # the header is a chunk of its own
    assert [c.length for c in files1["junk.safetensors"].chunks] == [4 << 20, 4 << 20, 1 << 20]


@pytest.mark.parametrize(
    "meta",
    [
        {f"k{i}": "v" for i in range(65)},
        {"": "v"},
        {"k" * 65: "v"},
        {"bad\nkey": "v"},
        {"k": "v" * 1025},
        {"k": [5]},  # numbers and bools are meta values now (issue 19); lists are not
    ],
)
def test_meta_beyond_the_manifest_limits_is_refused_before_signing(
    tmp_path: Path, meta: dict[str, object]
) -> None:
    """A manifest that pullers would refuse is never published (the API passes
    meta through unchecked otherwise)."""
    home, _ = Home.init(tmp_path / "home")
    (tmp_path / "w.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(ConfigError, match="meta"):
        publish(home, tmp_path / "w.safetensors", "m", 1, meta)  # type: ignore[arg-type]
    assert home.catalog.all() == []


def test_format_is_detected_and_kept_on_republish(tmp_path: Path) -> None:
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model-00001.safetensors").write_bytes(b"x" * 100)
    (ck / "optim.pt").write_bytes(b"y" * 100)
    (ck / "config.json").write_text("{}")
    first = publish(home, ck, "m", None, {"step": "7"})
    assert dict(first.meta) == {"format": "pytorch+safetensors", "step": "7"}
    assert publish(home, ck, "m", None, {"step": "7"}).version == first.version
    mine = publish(home, ck, "m", None, {"step": "7", "format": "mine"})
    assert dict(mine.meta)["format"] == "mine" and mine.version == first.version + 1
