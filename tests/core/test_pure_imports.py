"""The pure core imports no trio: each pure module is loaded in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "p2pckpt.channel.noise",
    "p2pckpt.channel.cipher",
    "p2pckpt.channel.handshake",
    "p2pckpt.channel.records",
    "p2pckpt.wire.codec",
    "p2pckpt.wire.bodies",
    "p2pckpt.wire.messages",
    "p2pckpt.wire.packing",
    "p2pckpt.wire.bitfield",
    "p2pckpt.manifest.manifest",
    "p2pckpt.manifest.chunker",
    "p2pckpt.manifest.paths",
    "p2pckpt.manifest.select",
    "p2pckpt.manifest.gather",
    "p2pckpt.store.journal",
    "p2pckpt.identity.peer_id",
    "p2pckpt.relay.protocol",
    "p2pckpt.discovery.txt",
    "p2pckpt.discovery.sightings",
    "p2pckpt.net.ratelimit",
    "p2pckpt.transfer.admission",
    "p2pckpt.net.pace",
    "p2pckpt.transfer.packpolicy",
    "p2pckpt.transfer.requests",
    "p2pckpt.config",
    "p2pckpt.daemon.completion",
    "p2pckpt.pairing.core",
    "p2pckpt.wire.features",
    "p2pckpt.pairing.words",
]

# Prints the trio modules loaded after importing the module named in argv[1].
_PROBE = (
    "import importlib, sys; importlib.import_module(sys.argv[1]); "
    "print(' '.join(sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))))"
)


def test_pure_modules_do_not_import_trio() -> None:
    """No pure module, nor anything it imports, loads trio (one fresh interpreter each)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _PROBE, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in PURE_MODULES
    }
    culprits = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"importing {name} failed:\n{err}"
        if out.strip():
            culprits[name] = out.split()[:3]
    assert culprits == {}, f"pure modules that pull in trio: {culprits}"
