"""The multi-host gathering core: untrusted entries checked, proofs before signing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2pckpt.errors import HostRefused, LocalProtocolError
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.gather import (
    PROOF_BYTES,
    Gather,
    check_share,
    entries_to_wire,
    parse_entries,
    pick_proof,
    prove,
)
from p2pckpt.manifest.manifest import FileEntry, ManifestError, sign, verify

SEED = bytes(range(32))


def host_files(prefix: str, n: int = 2, size: int = 3000, chunk: int = 1000) -> dict[str, bytes]:
    return {f"{prefix}/shard-{i}.bin": bytes([i + len(prefix)]) * size for i in range(n)} | {
        f"{prefix}/tail.bin": b"t" * (size + chunk // 2)
    }


def entries(files: dict[str, bytes], chunk: int = 1000) -> list[FileEntry]:
    out = []
    for path, data in sorted(files.items()):
        chunks = tuple(
            Chunk(off, len(data[off : off + chunk]), chunk_hash(data[off : off + chunk]))
            for off in range(0, len(data), chunk)
        )
        out.append(FileEntry(path, len(data), chunks))
    return out


def reader(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return lambda path, off, n: files[path][off : off + n]


def gathered(hosts: dict[str, dict[str, bytes]]) -> Gather:
    g = Gather("mh", 3)
    for host, files in hosts.items():
        g.add(host, entries_to_wire(entries(files)))
    picks = g.challenge(SEED)
    for host, files in hosts.items():
        g.check_proof(host, prove(picks[host], reader(files)))
    return g


def test_honest_hosts_make_one_manifest_each_host_finds_its_files_in() -> None:
    """Every host's files end up in one signed manifest, unchanged."""
    hosts = {f"rank {r}": host_files(f"r{r}") for r in range(4)}
    key = NodeKey.generate()
    draft, shares = gathered(hosts).manifest(key.peer_id, 1_700_000_000, {"step": "3"})
    manifest, envelope = sign(draft, key)
    assert len(manifest.files) == 12 and manifest.kind == "dir"
    for host, files in hosts.items():
        check_share(verify(envelope), entries(files))
        assert list(shares[host]) == entries(files)


def test_a_host_lying_about_a_chunk_it_was_asked_for_is_refused_by_name() -> None:
    """A claimed digest the host cannot show bytes for refuses it: nothing to sign."""
    files = host_files("r1")
    claimed = entries(files)
    bad = replace(
        claimed[0],
        chunks=(*claimed[0].chunks[:-1], replace(claimed[0].chunks[-1], digest=bytes(32))),
    )
    g = Gather("mh", 3)
    g.add("rank 0", entries_to_wire(entries(host_files("r0"))))
    g.add("rank 1", entries_to_wire([bad, *claimed[1:]]))
    picks = g.challenge(SEED)
    g.check_proof("rank 0", prove(picks["rank 0"], reader(host_files("r0"))))
    with pytest.raises(HostRefused, match=r"rank 1 refused \('r1/shard-0.bin'\)") as info:
        g.check_proof("rank 1", prove(picks["rank 1"], reader(files)))
    assert info.value.host == "rank 1" and "nothing was signed" in str(info.value)
    with pytest.raises(LocalProtocolError):
        g.manifest(NodeKey.generate().peer_id, 1, {})


def test_a_host_claiming_a_bigger_file_than_it_holds_is_refused() -> None:
    """The last chunk of every file is always asked: a size claim is checked."""
    files = host_files("r0")
    claimed = entries(files)
    fake = dict(files)
    fake["r0/tail.bin"] = files["r0/tail.bin"] + b"more bytes than the disk holds"
    g = Gather("mh", 1)
    g.add("rank 0", entries_to_wire(entries(fake)))
    picks = g.challenge(SEED)
    assert {p for p, _ in picks["rank 0"]} >= {e.path for e in claimed}
    with pytest.raises(HostRefused, match=r"tail\.bin"):
        g.check_proof("rank 0", prove(picks["rank 0"], reader(files)))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("not a list", "malformed"),
        ([], "malformed"),
        ([["../x", 1, [[0, 1, bytes(32)]]]], r"\.\."),
        ([["/abs", 1, [[0, 1, bytes(32)]]]], "absolute"),
        ([["a", 2, [[0, 1, bytes(32)]]]], "do not cover"),
        ([["a", 1, [[0, 1, b"short"]]]], "chunk hash"),
        ([["a", 1, [[5, 1, bytes(32)]]]], "offsets"),
        ([["a", 1, [[0, 1, bytes(32)]]], ["a", 1, [[0, 1, bytes(32)]]]], "duplicate"),
        ([["a", True, []]], "size"),
        ([["a", 0, "nope"]], "size or chunks"),
    ],
)
def test_malformed_entries_are_refused_before_anything_is_merged(doc: object, match: str) -> None:
    with pytest.raises(HostRefused, match=match):
        parse_entries("rank 5", doc)


def test_a_path_claimed_by_two_hosts_is_refused() -> None:
    """Two hosts cannot both hold one file (nor names differing only in case)."""
    g = Gather("mh", 1)
    g.add("rank 0", entries_to_wire(entries({"a/x.bin": b"1"})))
    with pytest.raises(HostRefused, match="also claimed by rank 0"):
        g.add("rank 1", entries_to_wire(entries({"a/x.bin": b"1"})))
    g2 = Gather("mh", 1)
    g2.add("rank 0", entries_to_wire(entries({"a/X.bin": b"1"})))
    with pytest.raises(HostRefused, match="case"):
        g2.add("rank 1", entries_to_wire(entries({"a/x.bin": b"1"})))


def test_calls_out_of_order_and_after_a_refusal_fail_closed() -> None:
    g = Gather("mh", 1)
    with pytest.raises(LocalProtocolError):
        g.challenge(SEED)  # nobody sent entries
    g.add("rank 0", entries_to_wire(entries({"x": b"1"})))
    with pytest.raises(LocalProtocolError):
        g.check_proof("rank 0", [])  # before the challenge
    with pytest.raises(LocalProtocolError):
        g.challenge(b"short seed")
    g.challenge(SEED)
    with pytest.raises(LocalProtocolError):
        g.add("rank 1", entries_to_wire(entries({"y": b"1"})))  # after it
    with pytest.raises(HostRefused, match="did not show"):
        g.check_proof("rank 0", "garbage")
    with pytest.raises(LocalProtocolError):
        g.check_proof("rank 0", [b"1"])  # refused once: always


def test_a_proof_stays_within_its_byte_budget() -> None:
    """Thousands of big files: the chunks asked of one host stay bounded."""
    big = [FileEntry(f"f{i}", 16 << 20, (Chunk(0, 16 << 20, bytes(32)),)) for i in range(200)]
    picks = pick_proof(big, SEED, "rank 0")
    assert 0 < sum(c.length for _, c in picks) <= PROOF_BYTES


def test_a_share_whose_entries_changed_is_refused_by_its_host() -> None:
    """A contributor never records a version saying other things of its files."""
    key = NodeKey.generate()
    hosts = {"rank 0": host_files("r0"), "rank 1": host_files("r1")}
    draft, _ = gathered(hosts).manifest(key.peer_id, 1, {})
    manifest, _ = sign(draft, key)
    mine = entries(hosts["rank 1"])
    changed = [replace(mine[0], path="r1/other.bin"), *mine[1:]]
    with pytest.raises(ManifestError, match="does not list"):
        check_share(manifest, changed)
