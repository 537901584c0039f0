"""Fixtures for the cross-release tests: v0.1.0 built once per session."""

from __future__ import annotations

import pytest

from tests.compat.release import NEW, OLD, Release, build_release, current_release


@pytest.fixture(scope="session")
def old(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """v0.1.0 in a virtual environment of its own (built once, seconds)."""
    return build_release(tmp_path_factory.mktemp("release-v0.1.0"))


@pytest.fixture(scope="session")
def new() -> Release:
    """This checkout."""
    return current_release()


@pytest.fixture(scope="session")
def releases(old: Release, new: Release) -> dict[str, Release]:
    return {OLD: old, NEW: new}


@pytest.fixture(scope="session")
def old_cli(old: Release) -> list[str]:
    """The command prefix that runs v0.1.0's CLI."""
    return old.cli


@pytest.fixture(scope="session")
def new_cli(new: Release) -> list[str]:
    """The command prefix that runs this checkout's CLI."""
    return new.cli
