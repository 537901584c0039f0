"""A node's home directory: key, trust store, catalog, config.

``--home DIR`` or ``P2PCKPT_HOME`` select it, so several nodes run side by
side on one machine. The directory is 0700 and refused if others can write
it (R-54).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from p2pckpt.errors import ConfigError
from p2pckpt.identity.keys import KEY_FILE, NodeKey
from p2pckpt.identity.trust import TRUST_FILE, TrustFile, TrustStore
from p2pckpt.store.catalog import CATALOG_FILE, Catalog


def default_home() -> Path:
    env = os.environ.get("P2PCKPT_HOME")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("p2pckpt", appauthor=False))


@dataclass
class Home:
    """An opened node home."""

    path: Path
    key: NodeKey
    trust_file: TrustFile
    catalog: Catalog

    @property
    def trust(self) -> TrustStore:
        """The trust store as ``trust.json`` holds it now (see ``TrustFile``):
        read it here at each decision, never keep it."""
        return self.trust_file.current()

    @classmethod
    def init(cls, path: Path, force: bool = False) -> tuple[Home, bool]:
        """Create key, trust store and catalog if missing; returns (home, created).

        A home that has state but lost its key is not re-keyed silently: a
        new key is a new peer ID, and every peer would stop trusting us.
        ``force`` makes a new key whatever is there (``rotate_key``): the CLI
        asks first.
        """
        path = path.expanduser().absolute()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if force and (path / KEY_FILE).exists():
            home = cls.open(path)
            home.rotate_key()
            return home, True
        created = not (path / KEY_FILE).exists()
        state = [n for n in (TRUST_FILE, CATALOG_FILE) if (path / n).exists()]
        if created and state and not force:
            raise ConfigError(
                f"{path} has {' and '.join(state)} but no {KEY_FILE}: a new key would give this"
                " node a new peer ID that its peers do not trust. Restore the key, or run"
                " 'p2pckpt init --force' to make a new one"
            )
        if created:
            os.chmod(path, 0o700)
            NodeKey.generate().save(path)
        return cls.open(path), created

    @classmethod
    def open(cls, path: Path) -> Home:
        path = path.expanduser().absolute()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"no node home at {path}: run 'p2pckpt --home {path} init' first"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path} is not a directory")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"{path} is writable by others: chmod 700 it")
        key = NodeKey.load(path)
        return cls(path, key, TrustFile(path), Catalog(path / CATALOG_FILE))

    def rotate_key(self) -> None:
        """Replace this node's key with a new one (a new peer ID), atomically;
        the old key is not kept (a key rotated because it leaked must not
        linger). The trust store and catalog stay: the peers trusted here
        are still trusted, and versions the old key signed are still served
        (they verify against the old ID). Peers must trust the new ID."""
        key = NodeKey.generate()
        key.save(self.path)
        self.key = key

    def save_trust(self, store: TrustStore | None = None) -> None:
        """Persist the trust store (the current one after in-place edits)."""
        self.trust_file.save(store if store is not None else self.trust)
