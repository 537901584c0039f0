"""The test data: safetensors checkpoints of incompressible, non-dedupable bytes.

Shapes (``SHAPES``): ``single`` (one ``model.safetensors``), ``sharded`` (4 shards of a
quarter each + ``model.safetensors.index.json`` + ``config.json``), ``many`` (10,000 small
files, ~100 MB, in 100 folders). ``prepare_checkpoint(workdir, size)`` without a shape is
the original layout (512 MiB shards) that the other benchmark scripts use."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import IO, Any

from . import log
from .procs import helper_argv, run
from .units import MB, MIB, human_bytes

BLOCK_BYTES = 64 * MIB  # one os.urandom block, permuted differently per block
SHARD_TARGET_BYTES = 512 * MIB
TENSOR_BYTES = 64 * MIB
ROW_COLS = 4096
ROW_BYTES = ROW_COLS * 2  # F16
LAYOUT_VERSION = 1
_PROJ = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]


def _permutation(k: int) -> bytes:
    """A byte permutation per block index; different blocks differ at every byte (k < 256)."""
    hi, lo = (k >> 8) & 0xFF, k & 0xFF
    return bytes(((b ^ hi) + lo) & 0xFF for b in range(256))


class _ByteStream:
    """Endless pseudo-random stream: block k is ``base.translate(_permutation(k))``."""

    def __init__(self) -> None:
        self._base = os.urandom(BLOCK_BYTES)
        self._k = -1
        self._block = memoryview(b"")
        self._pos = 0

    def write_to(self, f: IO[bytes], n: int) -> None:
        while n:
            if self._pos == len(self._block):
                self._k += 1
                self._block = memoryview(self._base.translate(_permutation(self._k)))
                self._pos = 0
            take = min(n, len(self._block) - self._pos)
            f.write(self._block[self._pos : self._pos + take])
            self._pos += take
            n -= take


SHAPES = ("single", "sharded", "many")
SHARDED_SHARDS = 4
MANY_FILES = 10_000
MANY_DIRS = 100
MANY_BYTES = 100 * 1000 * 1000  # total of the ``many`` shape, whatever --size says


def generate_checkpoint(
    dest: Path, size: int, shards: int | None = None, single: bool = False
) -> None:
    """Write a safetensors checkpoint with ``size`` bytes of tensor data: ``single`` = one
    ``model.safetensors``; else ``shards`` shards (default: 512 MiB each) + index + config."""
    total = size // ROW_BYTES * ROW_BYTES
    if shards is None:
        shards = 1 if total < 16 * MIB else max(2, math.ceil(total / SHARD_TARGET_BYTES))
    per = total // shards // ROW_BYTES * ROW_BYTES
    sizes = [per] * (shards - 1) + [total - per * (shards - 1)]
    stream = _ByteStream()
    weight_map: dict[str, str] = {}
    tensor = 0
    dest.mkdir(parents=True)
    for i, shard_bytes in enumerate(sizes, 1):
        name = "model.safetensors" if single else f"model-{i:05d}-of-{shards:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        while offset < shard_bytes:
            n = min(TENSOR_BYTES, shard_bytes - offset)
            tname = f"model.layers.{tensor // len(_PROJ)}.{_PROJ[tensor % len(_PROJ)]}.weight"
            shape = [n // ROW_BYTES, ROW_COLS]
            header[tname] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
            weight_map[tname] = name
            offset += n
            tensor += 1
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(dest / name, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            stream.write_to(f, shard_bytes)
    if single:
        return
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "float16",
        "hidden_size": ROW_COLS,
        "num_hidden_layers": tensor // len(_PROJ) + 1,
        "p2pckpt_bench": {"layout": LAYOUT_VERSION, "bytes": size},
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def generate_many(dest: Path) -> None:
    """``MANY_FILES`` files of 2-18 KB (~``MANY_BYTES`` in all) in ``MANY_DIRS`` folders."""
    stream = _ByteStream()
    rng = random.Random(1234)
    per_dir = MANY_FILES // MANY_DIRS
    mean = MANY_BYTES // MANY_FILES
    for d in range(MANY_DIRS):
        folder = dest / f"part-{d:03d}"
        folder.mkdir(parents=True)
        for i in range(per_dir):
            with open(folder / f"blob-{i:03d}.bin", "wb") as f:
                stream.write_to(f, rng.randint(mean // 5, mean * 9 // 5))


def generate_main(dest: str, size: str, shape: str = "") -> int:
    """Helper-process entry: generate in a child so the parent's RSS high-water mark stays low
    (children inherit it, which would spoil the wait4 fallback)."""
    if shape == "many":
        generate_many(Path(dest))
    elif shape == "single":
        generate_checkpoint(Path(dest), int(size), shards=1, single=True)
    elif shape == "sharded":
        generate_checkpoint(Path(dest), int(size), shards=SHARDED_SHARDS)
    else:
        generate_checkpoint(Path(dest), int(size))
    return 0


def prepare_checkpoint(workdir: Path, size: int, shape: str | None = None) -> Path:
    """The checkpoint for ``size`` (and ``shape``; None = the original 512 MiB-shard
    layout), reused from an earlier run when its layout matches."""
    if shape == "many":
        size = MANY_BYTES
    stem = f"ckpt-{size}" if shape is None else f"ckpt-{shape}-{size}"
    ckpt = workdir / stem
    marker = workdir / f"{stem}.done"
    if marker.exists() and ckpt.is_dir():
        try:
            if json.loads(marker.read_text()).get("layout") == LAYOUT_VERSION:
                log(f"reusing checkpoint {ckpt}")
                return ckpt
        except ValueError:
            pass
    if ckpt.exists():
        shutil.rmtree(ckpt)
    marker.unlink(missing_ok=True)
    log(f"generating {human_bytes(size)} {shape or 'sharded'} checkpoint in {ckpt}")
    t0 = time.perf_counter()
    argv = helper_argv("_generate", ckpt, size, shape or "")
    run(argv, "generate checkpoint", 300 + size / (20 * MB))
    os.sync()  # flush writeback now, so it does not run during the first measurements
    log(f"generated in {time.perf_counter() - t0:.1f} s")
    marker.write_text(json.dumps({"layout": LAYOUT_VERSION, "size": size}))
    return ckpt


def checkpoint_files(root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file under ``root``, sorted."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )
