from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.nodes import Pair, make_pair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Two nodes that trust each other; servers stopped at teardown."""
    p = make_pair(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
