"""Multi-host publish through the hook (issue 21 item 2): a real torchrun job
(CPU, gloo, 4 ranks), each rank with its own home and directory, publishes one
version; 4 real servers serve their own files; a puller gets it whole from
all 4 and verifies it; a host gone makes the pull fail naming its file; a
rank lying about its entries is refused before anything is signed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pckpt.home import Home
from tests.e2e.nodes import Server, no_mdns, run, start_server

pytest.importorskip("torch")

JOB = Path(__file__).with_name("multihost_job.py")
RANKS = 4
NAME = "job-ckpt"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One ``torchrun --standalone --nproc_per_node 4`` job (torch's own
    module, run by this interpreter like every CLI the e2e tests start):
    step 7 published honestly, step 8 with rank 2 lying. Each rank's results."""
    base = tmp_path_factory.mktemp("job")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(RANKS),
            str(JOB),
            str(base),
            NAME,
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, [json.loads((base / f"result{r}.json").read_text()) for r in range(RANKS)]


def puller(base: Path, name: str, ranks: list[Path]) -> Path:
    """A puller trusting rank 0 as the publisher and every rank as a source,
    each rank letting it pull (written in process: no CLI round trips)."""
    home = Home.init(base / name)[0]
    no_mdns(home.path)
    for r, path in enumerate(ranks):
        rank = Home.open(path)
        rank.trust.add(home.key.peer_id, name, ("pull",))
        rank.save_trust()
        rank.catalog.close()
        home.trust.add(rank.key.peer_id, f"h{r}", ("publish" if r == 0 else "pull",))
    home.save_trust()
    home.catalog.close()
    return home.path


def test_a_torchrun_job_publishes_one_version_pulled_whole_from_its_four_hosts(
    job: tuple[Path, list[dict[str, Any]]],
) -> None:
    tmp_path, results = job
    assert all(r["7"]["ok"] for r in results), results
    assert len({r["7"]["root"] for r in results}) == 1
    ranks = [tmp_path / f"home{r}" for r in range(RANKS)]
    for r, home in enumerate(ranks):  # each host records its own files, in place
        (listed,) = json.loads(run(home, "ls", f"{NAME}@7", "--json").stdout)
        assert listed["partial"] and listed["files"] == RANKS + 1
        assert listed["meta"] == {"step": "7", "format": "distcp"}  # over every rank's files
        assert listed["location"] == str(tmp_path / f"data{r}" / "step7")
    first, second = puller(tmp_path, "p1", ranks), puller(tmp_path, "p2", ranks)
    servers: list[Server] = []
    try:
        for r, home in enumerate(ranks):
            servers.append(start_server(home, tmp_path / f"serve{r}.log"))
        sources = [a for s in servers for a in ("--from", s.addr)]
        out = tmp_path / "out"
        run(first, "pull", f"{NAME}@7", *sources, "-o", str(out))
        assert sorted(p.name for p in out.iterdir()) == [
            ".metadata",
            *(f"__{r}_0.distcp" for r in range(RANKS)),
        ]
        for r in range(RANKS):  # byte for byte what each rank wrote
            name = f"__{r}_0.distcp"
            assert (out / name).read_bytes() == (
                tmp_path / f"data{r}" / "step7" / name
            ).read_bytes()
        assert "matches" in run(first, "verify", str(out)).stdout
        # A host gone: its file is named, and so is the host (by the name its
        # static [[peer]] entry gives its address), nothing is written, no hang.
        peers = ""
        for home, server in zip(ranks, servers, strict=True):
            opened = Home.open(home)
            peers += f'[[peer]]\nid = "{opened.key.peer_id}"\naddr = "{server.addr}"\n'
            opened.catalog.close()
        (second / "config.toml").write_text("[discovery]\nmdns = false\n" + peers)
        servers[3].stop()
        failed = run(second, "pull", f"{NAME}@7", *sources, "-o", str(tmp_path / "o2"), check=False)
        assert failed.returncode == 3, failed.stderr  # NotFound's, as before
        assert "__3_0.distcp" in failed.stderr and "may be gone" in failed.stderr, failed.stderr
        assert f"unreachable: h3 ({servers[3].addr}: connection refused)" in failed.stderr
        assert not (tmp_path / "o2").exists()
    finally:
        for s in servers:
            s.stop()


def test_a_rank_lying_about_its_entries_is_refused_before_signing(
    job: tuple[Path, list[dict[str, Any]]],
) -> None:
    """Rank 2 claims a digest its file does not have: every rank fails with
    the same error naming it and its file, and no catalog holds the version."""
    base, results = job
    assert not any(r["8"]["ok"] for r in results), results
    for r in results:
        error = str(r["8"]["error"])
        assert "rank 2" in error and "__2_0.distcp" in error and "nothing was signed" in error
    for rank in range(RANKS):
        held = json.loads(run(base / f"home{rank}", "ls", NAME, "--json").stdout)
        assert [v["version"] for v in held] == [7]
