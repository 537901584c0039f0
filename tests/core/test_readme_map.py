"""The README's package map names every module of p2pckpt/, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "p2pckpt"


def _map_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    layout = text.split("\n## Layout\n", 1)[1]
    block = layout.split("```\n", 2)[1]
    return block.split("\ntests/", 1)[0].splitlines()  # p2pckpt/ only


def _named() -> set[str]:
    """Every module the map names, as a path relative to p2pckpt/."""
    named: set[str] = set()
    package = ""
    for line in _map_block():
        if not line.startswith("  "):
            continue
        text = re.sub(r"\([^)]*\)", "", line)  # comments in brackets name no modules
        head = text.split()[0] if text[2] != " " else ""
        if head.endswith("/"):
            package = head
        elif head.endswith(".py"):
            package = ""
        named |= {package + name for name in re.findall(r"\b\w+\.py\b", text)}
    return named


def test_the_package_map_names_every_module() -> None:
    actual = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    }
    named = _named()
    assert sorted(actual - named) == [], "modules missing from the README map"
    assert sorted(named - actual) == [], "the README map names modules that do not exist"
