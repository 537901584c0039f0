"""The Hugging Face hub cache: publish a snapshot's bytes, lay a pulled one out.

The layout ``huggingface_hub`` reads (and ``HF_HUB_OFFLINE=1`` loads from)::

    CACHE/models--ORG--NAME/
        blobs/ETAG                  the bytes: ETAG is the sha256 of an LFS file,
                                    the git blob sha1 of any other
        snapshots/COMMIT/PATH       relative links into ../../blobs/
        refs/BRANCH                 the COMMIT a branch points at

A snapshot's links are followed only into its own repository's ``blobs/``
(R-42: never out of the checkpoint; the rule is store/locations.py);
everything else about the tree is
checked as for any published directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from p2pckpt.errors import ConfigError, NotFound, UnsafePath
from p2pckpt.fs.atomic import fsync_dir, write_atomic
from p2pckpt.manifest.manifest import MAX_FILES, Manifest
from p2pckpt.manifest.paths import validate_path_set
from p2pckpt.manifest.walk import SourceFile
from p2pckpt.store.locations import real_path, snapshot_of, source_path

_REPO_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# Files that the hub's default .gitattributes stores with LFS (named by sha256).
_LFS_SUFFIXES = [
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".ot",
    ".pb",
    ".tflite",
    ".gguf",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".joblib",
    ".model",
    ".arrow",
    ".parquet",
    ".zip",
    ".zst",
    ".tar",
    ".tgz",
    ".gz",
    ".xz",
    ".bz2",
    ".7z",
]
LFS_MIN_SIZE = 10 << 20  # larger files are LFS whatever their name
_BUF = 4 << 20
_README_MAX = 1 << 20


def default_cache() -> Path:
    """Where ``huggingface_hub`` keeps its cache, by the same variables."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def parse_repo(spec: str) -> tuple[str, str | None]:
    """``org/name[@revision]`` into (repo id, revision or None)."""
    repo_id, sep, revision = spec.partition("@")
    # "--" and ".." are refused as the hub refuses them: "a--b/c" and "a/b--c"
    # would share one cache folder.
    if not _REPO_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ConfigError(f"{spec!r} is not a Hugging Face repo id (ORG/NAME[@REVISION])")
    if sep and not valid_ref(revision):
        raise ConfigError(f"bad revision in {spec!r}")
    return repo_id, revision if sep else None


def valid_ref(ref: str) -> bool:
    """A branch, tag or commit name that stays inside ``refs/``."""
    return bool(_REF_RE.match(ref)) and all(part not in ("", ".", "..") for part in ref.split("/"))


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def snapshot(cache: Path, repo_id: str, revision: str | None) -> tuple[Path, str, str | None]:
    """(snapshot dir, commit, branch) for a revision: a commit hash, or a
    branch or tag under ``refs/`` (default ``main``)."""
    repo = repo_dir(cache, repo_id)
    if not repo.is_dir():
        raise NotFound(f"{repo_id} is not in the Hugging Face cache {cache}")
    ref = revision or "main"
    if _COMMIT_RE.match(ref) and (repo / "snapshots" / ref).is_dir():
        return repo / "snapshots" / ref, ref, None
    try:
        commit = (repo / "refs" / ref).read_text().strip()
    except OSError:
        raise NotFound(f"{repo_id} has no revision {ref!r} in {cache}") from None
    if not _COMMIT_RE.match(commit) or not (repo / "snapshots" / commit).is_dir():
        raise NotFound(f"{repo_id}@{ref} points at {commit[:40]!r}, which is not in {cache}")
    return repo / "snapshots" / commit, commit, ref


def walk_snapshot(location: Path) -> list[SourceFile]:
    """The files of a cache snapshot with their blobs' bytes (R-42: each link
    must lead to a regular file in the repository's ``blobs/``)."""
    files: list[SourceFile] = []

    def unreadable(exc: OSError) -> None:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    for dirpath, dirnames, filenames in os.walk(location, onerror=unreadable):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            rel = Path(dirpath, name).relative_to(location).as_posix()
            path = source_path(location, rel)
            try:
                st = path.lstat()
            except OSError:
                st = os.stat_result((0,) * 10)  # a dangling link: refused below
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{rel!r} in {location} does not lead to a blob of its repository")
            files.append(
                SourceFile(rel, path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            )
            if len(files) > MAX_FILES:
                raise ConfigError(f"{location} has more than {MAX_FILES} files")
    if not files:
        raise ConfigError(f"{location} contains no files")
    files.sort(key=lambda f: f.relpath)
    validate_path_set([f.relpath for f in files])
    return files


def is_snapshot(path: Path) -> bool:
    return snapshot_of(path) == path and path.is_dir() and not path.is_symlink()


def card_meta(location: Path) -> dict[str, str]:
    """``license`` and ``base_model`` from the model card's YAML header, if any."""
    path = source_path(location, "README.md")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        text = f.read(_README_MAX).decode("utf-8", errors="replace")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found: dict[str, str] = {}
    for i, line in enumerate(lines[1:], 1):
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if not sep or key not in ("license", "base_model"):
            continue
        value = value.strip()
        if not value and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("- "):
            value = lines[i + 1].strip()[2:].strip()  # a list: its first item
        value = value.strip("'\"")
        if value and len(value) <= 128 and value.isprintable():
            found[key] = value
    return found


def etag(path: Path, size: int, relpath: str) -> str:
    """The name the hub gives this file's blob: sha256 for LFS files, else the
    git blob sha1 (``sha1("blob SIZE\\0" + bytes)``)."""
    lfs = size >= LFS_MIN_SIZE or relpath.lower().endswith(tuple(_LFS_SUFFIXES))
    digest = hashlib.sha256() if lfs else hashlib.sha1(f"blob {size}\0".encode())  # noqa: S324
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        while block := f.read(_BUF):
            digest.update(block)
    return digest.hexdigest()


def commit_for(manifest: Manifest) -> str:
    """The snapshot folder name: the publisher's commit, or one made from the root."""
    commit = manifest.meta.get("hf_revision", "")
    return commit if _COMMIT_RE.match(commit) else manifest.root.hex()[:40]


def branch_for(manifest: Manifest) -> str:
    """The ref to point at the snapshot: the publisher's branch if it is a
    plain name (no folders, so it cannot collide with another ref), else main."""
    ref = manifest.meta.get("hf_ref", "main")
    return ref if valid_ref(ref) and "/" not in ref else "main"


def check_folder(path: Path) -> None:
    """A cache folder we write into must be a real folder of ours that no one
    else may write to (else a local user could swap what we lay out, R-38)."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a folder (a link?); not writing into it")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise UnsafePath(f"{path} is not ours alone (owner or group/other write); not using it")


def lay_out(repo: Path, pulled: Path, manifest: Manifest) -> Path:
    """Move a verified pull (``pulled``, inside ``repo``) into the cache
    layout; returns the snapshot folder. Nothing there is ever removed or
    overwritten but a blob (content-named: same name, same bytes): a new
    snapshot is built aside and renamed in whole; an existing one only gains
    the links it lacks, and a link that names other bytes is refused. Then
    the ref moves (atomic replace). A crash leaves at worst unused blobs."""
    check_folder(repo)
    commit = commit_for(manifest)
    blobs, snapshots, final = repo / "blobs", repo / "snapshots", repo / "snapshots" / commit
    names: dict[str, str] = {}
    for entry in manifest.files:  # every blob name first: a conflict changes nothing
        src = pulled if manifest.kind == "file" else pulled / entry.path
        names[entry.path] = etag(src, entry.size, entry.path)
        link = final / entry.path
        if link.is_symlink() and not _same_bytes(real_path(link), src):
            raise UnsafePath(
                f"{link} already names other bytes; not overwriting it (pull into another"
                " cache or --hf-repo)"
            )
    for folder in (blobs, snapshots, repo / "refs"):
        folder.mkdir(exist_ok=True)
        check_folder(folder)
    fresh = not final.exists() and not final.is_symlink()
    building = snapshots / f".{commit}.p2pckpt-{secrets.token_hex(4)}" if fresh else final
    if fresh:
        building.mkdir()
    else:
        check_folder(final)
    for entry in manifest.files:
        src = pulled if manifest.kind == "file" else pulled / entry.path
        os.replace(src, blobs / names[entry.path])
        link = building / entry.path
        if link.is_symlink():
            continue  # the same blob already (checked above)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blobs / names[entry.path], link.parent), link)
    fsync_dir(blobs)
    for dirpath, _, _ in os.walk(building, topdown=False):
        fsync_dir(Path(dirpath))
    if fresh:
        os.rename(building, final)  # fails if a snapshot appeared meanwhile: nothing lost
    fsync_dir(snapshots)
    point_ref(repo, branch_for(manifest), commit)
    return final


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two regular files (never links) hold the same bytes."""
    try:
        fa = os.open(a, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fa, "rb", buffering=0) as x, open(b, "rb", buffering=0) as y:
        if (
            not stat.S_ISREG(os.fstat(fa).st_mode)
            or os.fstat(fa).st_size != os.fstat(y.fileno()).st_size
        ):
            return False
        while True:
            block = x.read(_BUF)
            if block != y.read(_BUF):
                return False
            if not block:
                return True


def point_ref(repo: Path, branch: str, commit: str) -> None:
    """Make ``refs/BRANCH`` name ``commit`` (atomically, durably)."""
    if not valid_ref(branch) or "/" in branch:
        raise ConfigError(f"bad branch name {branch!r}")
    write_atomic(repo / "refs" / branch, commit.encode(), mode=0o644)
