"""The release users run today (v0.1.0) beside this checkout, as real processes.

``build_release`` makes v0.1.0 from the repository's own history, with no
network: ``git archive`` of the tag (or of its commit, in a clone without
tags) into a directory, a wheel built from it with the running
interpreter's setuptools (``pip wheel --no-deps --no-build-isolation
--no-index``), and a virtual environment of its own with that wheel
installed. The old environment reuses the running environment's
dependencies through a ``.pth`` file naming its site-packages: a plain path
line only extends ``sys.path`` (no ``.pth`` file there runs), so this
checkout's editable install is never seen by the old interpreter, and
``-I`` keeps ``PYTHONPATH`` and the working directory out of it too. The
build is checked: the old interpreter imports ``p2pckpt`` from its own
site-packages, and that copy's files are the release's.

``Release`` runs one release's CLI; ``OLD``/``NEW`` name them in test ids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import nodes
from tests.e2e.nodes import Server, no_mdns

RELEASE_TAG = "v0.1.0"
RELEASE_COMMIT = "ccf935b"  # what the tag names; used when a clone lacks tags
ROOT = Path(__file__).resolve().parents[2]
OLD = "v0.1.0"
NEW = "current"
BUILD_TIMEOUT = 120.0
ALL_ROLES = ("pull", "publish", "push")


class ReleaseMissing(AssertionError):
    """v0.1.0 is not in this clone's history: the compat tests cannot run."""


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, timeout=BUILD_TIMEOUT
    )


def release_commit() -> str:
    """The full hash of v0.1.0: the tag, else the commit it names; fails
    (never skips) when this clone holds neither."""
    for ref in (RELEASE_TAG, RELEASE_COMMIT):
        found = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if found.returncode == 0:
            commit = found.stdout.decode().strip()
            if not commit.startswith(RELEASE_COMMIT):
                raise ReleaseMissing(
                    f"{ref} is {commit}, not the released commit {RELEASE_COMMIT}: "
                    "the tag was moved; the compat tests must run against the release"
                )
            return commit
    raise ReleaseMissing(
        f"neither the tag {RELEASE_TAG} nor the commit {RELEASE_COMMIT} is in the git "
        f"history at {ROOT}: the cross-release tests (tests/compat) need the release users "
        "run; fetch it (git fetch --tags, or a checkout with fetch-depth: 0)"
    )


def _parent_site_dirs() -> list[str]:
    """Where the running interpreter's installed packages live (its venv's
    site-packages, and the user site if it is in use)."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    unique: list[str] = []
    for d in dirs:
        if d not in unique and os.path.isdir(d):
            unique.append(d)
    return unique


def _check(argv: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(
            f"building {RELEASE_TAG}: {what} failed ({proc.returncode}):\n"
            f"{' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def build_release(workdir: Path) -> Release:
    """v0.1.0 built from this repository's history into ``workdir`` (its
    source, a wheel, and a virtual environment with it installed)."""
    commit = release_commit()
    for needed in ("pip", "setuptools"):
        if importlib.util.find_spec(needed) is None:
            raise AssertionError(
                f"building {RELEASE_TAG} offline needs {needed} in the test environment"
                f" ({sys.executable}): pip install -e '.[test]'"
            )
    src, wheels, venv = workdir / "src", workdir / "wheels", workdir / "venv"
    src.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert archive.stdout is not None
    untar = subprocess.run(
        ["tar", "-x", "-C", str(src)],
        stdin=archive.stdout,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    archive.stdout.close()
    _, archive_err = archive.communicate(timeout=BUILD_TIMEOUT)
    if archive.returncode != 0 or untar.returncode != 0:
        raise AssertionError(
            f"git archive {commit} | tar -x failed: {archive_err!r} {untar.stderr!r}"
        )
    # The wheel, with the setuptools of the running environment and no index.
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        "pip wheel",
    )
    (wheel,) = wheels.glob("p2pckpt-*.whl")
    # Its own environment (no pip in it: the running one installs into it),
    # filled before it can see the running environment's packages, so that
    # pip finds nothing to uninstall there.
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    python = venv / "bin" / "python"
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        "pip install",
    )
    purelib = Path(
        _check(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            "asking the new environment for its site-packages",
        ).strip()
    )
    (purelib / "_p2pckpt_compat_parent.pth").write_text(
        "".join(f"{d}\n" for d in _parent_site_dirs())
    )
    release = Release(OLD, (str(python), "-I", "-u", "-m", "p2pckpt"), workdir)
    # It must be the old copy, in its own environment, whatever the cwd.
    where = Path(
        _check(
            [str(python), "-I", "-c", "import p2pckpt; print(p2pckpt.__file__)"],
            f"importing {RELEASE_TAG}",
            cwd=ROOT,
        ).strip()
    )
    if not where.is_relative_to(purelib):
        raise AssertionError(f"{RELEASE_TAG}'s interpreter imports p2pckpt from {where}")
    # ... and run plainly (no -I, no PYTHONPATH), the running environment's
    # editable install of this checkout is not what it finds either.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    plain = subprocess.run(
        [str(python), "-c", "import p2pckpt; print(p2pckpt.__file__)"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        cwd=workdir,
        env=env,
    )
    if plain.returncode != 0 or Path(plain.stdout.strip()) != where:
        raise AssertionError(f"{python} -c 'import p2pckpt' finds {plain.stdout}{plain.stderr}")
    for module in ("cli/main.py", "store/catalog.py", "transfer/pull.py"):
        if (where.parent / module).read_bytes() != (src / "p2pckpt" / module).read_bytes():
            raise AssertionError(f"{where.parent / module} is not {RELEASE_TAG}'s")
    return release


def current_release() -> Release:
    """This checkout, run as the e2e tests run it; checked to import from it."""
    where = subprocess.run(
        [sys.executable, "-c", "import p2pckpt; print(p2pckpt.__file__)"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    ).stdout.strip()
    if not where or not Path(where).resolve().is_relative_to(ROOT):
        raise AssertionError(f"the current CLI imports p2pckpt from {where!r}, not from {ROOT}")
    return Release(NEW, tuple(nodes.CLI), ROOT)


@dataclass(frozen=True)
class Release:
    """One release's CLI: ``run``, ``start_server``... like tests/e2e/nodes."""

    name: str  # OLD or NEW
    argv: tuple[str, ...]
    where: Path

    @property
    def cli(self) -> list[str]:
        return list(self.argv)

    def run(
        self, home: Path, *args: str, check: bool = True, timeout: float = nodes.TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return nodes.run(home, *args, check=check, timeout=timeout, cli=self.cli)

    def run_json(self, home: Path, *args: str) -> Any:
        return nodes.run_json(home, *args, cli=self.cli)

    def start_server(
        self, home: Path, log: Path, *, extra: tuple[str, ...] = ("--no-mdns",)
    ) -> Server:
        return nodes.start_server(home, log, extra=extra, cli=self.cli)

    def start_daemon(self, home: Path, log: Path, config: Path) -> Server:
        return nodes.start_server(
            home,
            log,
            command=("daemon", "--config", str(config)),
            extra=(),
            banner=r"daemon listening on [0-9.]+:(\d+)",
            cli=self.cli,
        )

    def popen(self, home: Path, *args: str) -> subprocess.Popen[str]:
        """A long-running command (a slow pull) to interrupt; output piped."""
        return subprocess.Popen(
            [*self.argv, "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@dataclass(frozen=True)
class Node:
    """An initialised home run by one release (mDNS off: 127.0.0.1 only)."""

    home: Path
    id: str
    release: Release
    label: str

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.release.run(self.home, *args, **kw)

    def run_json(self, *args: str) -> Any:
        return self.release.run_json(self.home, *args)


def make_node(root: Path, label: str, release: Release) -> Node:
    home = root / label
    peer_id = release.run(home, "init").stdout.strip()
    no_mdns(home)
    return Node(home, peer_id, release, label)


def trust_each_other(nodes_: Iterable[Node], roles: tuple[str, ...] = ALL_ROLES) -> None:
    """Every node trusts every other with ``roles``, under its label."""
    group = list(nodes_)
    for node in group:
        for other in group:
            if other is not node:
                flags = [x for r in roles for x in ("--role", r)]
                node.run("trust", "add", other.id, "--name", other.label.lower(), *flags)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a real condition (another process makes it true) until a deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> tuple[str, str]:
    """End a process we started (by its own handle) and collect its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=10)


def loads(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)
