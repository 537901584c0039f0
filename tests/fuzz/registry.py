"""Every fuzz harness by name. Harness modules are imported on demand, so
``scripts/fuzz.py`` can import one under atheris instrumentation before
anything of p2pckpt is loaded."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

MODULES = {
    "frames": "tests.fuzz.frames",  # wire/codec.py: framing and reassembly
    "bodies": "tests.fuzz.bodies",  # wire/codec.py + messages.py: msgpack bodies
    "packed": "tests.fuzz.packed",  # wire/packing.py: ChunkPacked bodies
    "records": "tests.fuzz.records",  # channel/records.py: AEAD records
    "handshake": "tests.fuzz.handshake",  # channel/handshake.py + noise.py
    "manifest": "tests.fuzz.manifest",  # manifest/manifest.py: envelope and body
    "have": "tests.fuzz.have",  # Have bitfields -> transfer/schedule.py
    "relay": "tests.fuzz.relay",  # relay/protocol.py: control frames
    "txt": "tests.fuzz.txt",  # discovery/txt.py (+ zeroconf's TXT decoding)
    "config": "tests.fuzz.config",  # config.py: TOML
    "journal": "tests.fuzz.journal",  # store/journal.py: resume journal
    "gather": "tests.fuzz.gather",  # manifest/gather.py: a contributor's file entries
}


@dataclass(frozen=True)
class Harness:
    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int  # longest input worth generating
    instrument: tuple[str, ...]  # packages to instrument besides p2pckpt and tests


def load(name: str) -> Harness:
    module = importlib.import_module(MODULES[name])
    return Harness(
        name=name,
        one_input=module.one_input,
        seeds=module.seeds,
        max_len=module.MAX_LEN,
        instrument=getattr(module, "INSTRUMENT", ()),
    )
