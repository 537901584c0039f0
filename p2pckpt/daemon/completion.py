"""When is a watched checkpoint complete? (pure: no trio, no clock, no file I/O)

The watcher (``daemon/watch.py``) gathers a :class:`Snapshot` of each child of
a watched folder — a file, or a directory tree — and asks
:func:`is_complete`. Publishing a checkpoint that a writer is still writing
would sign and serve a torn file as "complete", so every rule errs towards
"not yet":

``stable``
    The file set, sizes and mtimes were identical in two snapshots and
    nothing changed for ``stable_seconds``. A file that is still growing
    changes its size and mtime, so it is never complete.
``marker``
    A directory holds ``spec.marker`` (a file named ``<file>.<marker>``
    beside it, for a single-file checkpoint). Writers create it last. The
    marker is part of the published tree: it is tiny, it keeps the pulled
    copy identical to the source (tools on the pulling side that wait for the
    same marker keep working), and leaving it out would need an exclude list
    in ``manifest/walk.py``.
``index``
    Every safetensors file is fully written — its header declares tensors
    whose data end exactly at the end of the file — and a directory's
    ``model.safetensors.index.json`` names only shards that exist; then the
    tree must also stay quiet for ``INDEX_GRACE`` (a writer that preallocates
    has the right size before its last bytes land). A directory without an
    index counts only if it holds unsharded safetensors files (a small
    model's single ``model.safetensors``), never ``-00001-of-00004`` shards
    whose index is still to come.

Under every rule a tree holding a temporary name, a link or a special file
is not complete: a writer is mid-way, or ``walk`` would refuse it anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from p2pckpt.config import WatchSpec
from p2pckpt.manifest.manifest import MAX_VERSION

INDEX_FILE: Final = "model.safetensors.index.json"
INDEX_GRACE: Final = 1.0  # seconds an "index"-complete tree must stay unchanged
MAX_HEADER: Final = 100_000_000  # the safetensors format's own header limit
TEMPORARY_SUFFIXES: Final = (".tmp", ".temp", ".partial", ".part", ".incomplete")
P2PCKPT_PARTIAL: Final = ".p2pckpt-partial"  # our own pulls in progress (store/staging.py)

_STEP = re.compile(r"step[s]?[-_.]?(\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"(?<!\d)(\d+)(?![\dA-Za-z])")  # not "8b", "70B": model sizes
_EXTENSION = re.compile(r"\.(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{1,12}$")  # ".h5", ".pt"
_SHARD = re.compile(r"-\d+-of-\d+\.safetensors$")


def version_from_name(name: str) -> int | None:
    """The training step in a child's name: the number after "step" if there
    is one (``epoch3-step900.pt`` → 900), else the last integer outside the
    extension (``checkpoint-500`` → 500, ``model.h5`` → None); None if there
    is none or it is beyond the manifest's version range."""
    steps = _STEP.findall(name)
    if steps:
        digits = steps[-1]
    else:
        numbers = _INTEGER.findall(_EXTENSION.sub("", name))
        if not numbers:
            return None
        digits = numbers[-1]
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(MAX_VERSION)):  # before int(): no giant conversions
        return None
    value = int(digits)
    return value if value <= MAX_VERSION else None


def is_temporary(name: str) -> bool:
    """A name writers use while a file is in progress (renamed when done)."""
    lower = name.lower()
    return lower.endswith(TEMPORARY_SUFFIXES) or lower.endswith(P2PCKPT_PARTIAL)


def is_candidate_name(name: str, spec: WatchSpec) -> bool:
    """Whether a child of the watched folder can be a checkpoint at all:
    not hidden, not temporary, and not a marker (``COMPLETE`` or
    ``<file>.COMPLETE``) under the marker rule."""
    if not name or name.startswith(".") or is_temporary(name):
        return False
    return not (
        spec.complete == "marker" and (name == spec.marker or name.endswith(f".{spec.marker}"))
    )


def settle_seconds(spec: WatchSpec) -> float:
    """How long a child must stay unchanged before its rule can say complete;
    the watcher sleeps until then instead of polling."""
    if spec.complete == "stable":
        return spec.stable_seconds
    return INDEX_GRACE if spec.complete == "index" else 0.0


@dataclass(frozen=True)
class Snapshot:
    """What a child looks like at one moment (gathered by ``watch.gather``).

    ``files`` maps each regular file's relative path (the file's own name for
    a single-file child) to ``(size, mtime_ns)``. ``problem`` says why the
    tree cannot be published as it is (a link, a special file, too many
    files). ``marker`` is whether a single file's ``<file>.<marker>`` sibling
    exists (a directory's marker is simply in ``files``). ``complete_shards``
    are the safetensors files whose header says they are fully written;
    ``index`` the raw index JSON (both only gathered for the index rule).
    """

    kind: str  # "file" or "dir"
    files: Mapping[str, tuple[int, int]]
    dirs: frozenset[str] = frozenset()
    problem: str = ""
    marker: bool = False
    index: bytes | None = None
    complete_shards: frozenset[str] = field(default_factory=frozenset)


def header_length(first8: bytes) -> int | None:
    """The JSON header length a safetensors file declares, if plausible."""
    if len(first8) < 8:
        return None
    n = int.from_bytes(first8[:8], "little")
    return n if 2 <= n <= MAX_HEADER else None


def safetensors_complete(head: bytes, size: int) -> bool:
    """Whether a safetensors file of ``size`` bytes whose first bytes are
    ``head`` (8-byte length + JSON header) is fully written: its tensors'
    data must end exactly at the end of the file. A file still being written
    sequentially is shorter than that; a malformed header is never complete."""
    n = header_length(head)
    if n is None or len(head) < 8 + n or 8 + n > size:
        return False
    try:
        header = json.loads(head[8 : 8 + n])
    except (ValueError, RecursionError):  # bad JSON or UTF-8, or absurd nesting
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return False
        end = max(end, offsets[1])
    return end == size - 8 - n


def index_shards(index: bytes) -> frozenset[str] | None:
    """The shard files an index's ``weight_map`` names; None if the index is
    malformed (perhaps half-written) or names none."""
    try:
        doc = json.loads(index)
    except (ValueError, RecursionError):
        return None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return None
    shards = set(weight_map.values())
    if not all(isinstance(s, str) and s for s in shards):
        return None
    return frozenset(shards)


def _safetensors_done(snap: Snapshot) -> bool:
    if snap.kind == "file":
        return all(p.endswith(".safetensors") and p in snap.complete_shards for p in snap.files)
    tensors = [p for p in snap.files if p.endswith(".safetensors")]
    if not all(p in snap.complete_shards for p in tensors):
        return False
    if snap.index is None:
        return bool(tensors) and not any(_SHARD.search(p) for p in tensors)
    shards = index_shards(snap.index)
    return shards is not None and all(s in snap.complete_shards for s in shards)


def is_complete(
    rule: str,
    snapshot_now: Snapshot,
    snapshot_before: Snapshot | None,
    seconds_since_last_change: float,
    spec: WatchSpec,
) -> bool:
    """Whether the child seen as ``snapshot_now`` may be published now.

    ``snapshot_before`` is the previous snapshot (None at first sight) and
    ``seconds_since_last_change`` how long the watcher has seen no change
    (events or snapshot differences); the caller owns the clock.
    """
    now = snapshot_now
    if not now.files or now.problem:
        return False
    if any(is_temporary(p.rsplit("/", 1)[-1]) for p in now.files):
        return False
    quiet = snapshot_before == now
    if rule == "stable":
        return quiet and seconds_since_last_change >= spec.stable_seconds
    if rule == "marker":
        return spec.marker in now.files if now.kind == "dir" else now.marker
    if rule == "index":
        return quiet and seconds_since_last_change >= INDEX_GRACE and _safetensors_done(now)
    raise ValueError(f"unknown completion rule {rule!r}")


# -- streaming publish (issue 21) -------------------------------------------------
#
# A child that is not complete yet may already hold files that are: a shard
# the trainer closed while it writes the next. With ``stream = true`` the
# watcher offers those at once in a signed in-progress manifest. A file
# counts as finished only if it has looked the same (size and mtime) for
# ``stream_grace`` and, under the index rule, its safetensors header says
# its data end at its end (then a shorter SHARD_GRACE is enough: the
# header is the evidence, the quiet time only covers a writer that
# preallocates); a temporary name never counts. Erring towards
# "not yet" costs a little latency; erring the other way costs nothing
# worse than a follower fetching a shard twice: the final manifest decides
# what is installed, and anything it does not cover is never committed.

MIN_STREAM_GRACE: Final = 1.0  # seconds a file must look unchanged to count as finished
SHARD_GRACE: Final = 0.25  # the same for a shard whose safetensors header says it is whole
STREAM_INTERVAL: Final = 0.5  # at most one in-progress manifest per this many seconds
MAX_STREAM_UPDATES: Final = 1024  # in-progress manifests signed for one version, at most


def stream_grace(spec: WatchSpec, whole_shard: bool = False) -> float:
    """How long one file must look unchanged before it is offered early
    (``whole_shard``: a safetensors shard its header says is whole, under
    the index rule)."""
    if spec.complete == "stable":
        return spec.stable_seconds
    if whole_shard and spec.complete == "index":
        return SHARD_GRACE
    return max(MIN_STREAM_GRACE, INDEX_GRACE)


def file_grace(spec: WatchSpec, snap: Snapshot, path: str) -> float:
    """``stream_grace`` for the file ``path`` of ``snap``."""
    return stream_grace(spec, path in snap.complete_shards)


def unchanged_since(
    before: Snapshot | None, now: Snapshot, since: Mapping[str, float], at: float
) -> dict[str, float]:
    """Since when each file of ``now`` has looked as it does: its time in
    ``since`` if ``before`` saw it the same, else ``at``."""
    out: dict[str, float] = {}
    for path, look in now.files.items():
        same = before is not None and before.files.get(path) == look
        out[path] = since.get(path, at) if same else at
    return out


def finished_files(
    snap: Snapshot, since: Mapping[str, float], at: float, spec: WatchSpec
) -> frozenset[str]:
    """The files of a directory child still being written that may be
    offered now (see above); none for a one-file child (the file *is* the
    checkpoint), a tree ``walk`` would refuse, or one with a temporary file
    beside them under the stable rule."""
    if snap.kind != "dir" or snap.problem or not snap.files:
        return frozenset()
    found = set()
    for path in snap.files:
        grace = file_grace(spec, snap, path)
        if is_temporary(path.rsplit("/", 1)[-1]) or at - since.get(path, at) < grace:
            continue
        if spec.complete == "marker" and path == spec.marker:
            continue  # the marker itself says "complete": only the final manifest has it
        if (
            spec.complete == "index"
            and path.endswith(".safetensors")
            and path not in snap.complete_shards
        ):
            continue
        found.add(path)
    return frozenset(found)


def should_offer(
    finished: frozenset[str],
    offered: frozenset[str],
    updates: int,
    last_offer: float,
    at: float,
) -> bool:
    """Whether to sign a new in-progress manifest: the finished set changed,
    it is not empty, and the bounds on how often (STREAM_INTERVAL) and how
    many times (MAX_STREAM_UPDATES) allow one."""
    return (
        bool(finished)
        and finished != offered
        and updates < MAX_STREAM_UPDATES
        and at - last_offer >= STREAM_INTERVAL
    )
