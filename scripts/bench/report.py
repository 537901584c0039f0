"""The report: the results table, the issue's targets (PASS/MISS), and the JSON document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .p2p import P2pResults
from .results import ToolResult
from .units import KIB, human_bytes

TARGET_VS_SCP = 1.5
TARGET_VS_RSYNC = 1.2
TARGET_RSS_MIB = 200.0
TARGET_HASH_GBPS = 1.0


@dataclass
class Target:
    name: str
    value: float | None
    threshold: str
    passed: bool | None
    shown: str

    def status(self) -> str:
        return "n/a " if self.passed is None else ("PASS" if self.passed else "MISS")


def _no_data(name: str, threshold: str = "") -> Target:
    return Target(name, None, threshold, None, "no data")


def _pull_targets(tag: str, pull: ToolResult, tools: dict[str, ToolResult]) -> list[Target]:
    out: list[Target] = []
    for base_name, need in (("scp", TARGET_VS_SCP), ("rsync", TARGET_VS_RSYNC)):
        name, base = f"{tag} throughput >= {need}x {base_name}", tools.get(base_name)
        if pull.ok and base is not None and base.ok:
            ratio = pull.mbps / base.mbps
            out.append(Target(name, ratio, f">= {need}", ratio >= need, f"{ratio:.2f}x"))
        else:
            out.append(_no_data(name, f">= {need}"))
    name, rsync = f"{tag} CPU s/GB <= rsync's", tools.get("rsync")
    if pull.ok and rsync is not None and rsync.ok:
        mine, theirs = pull.cpu_per_gb(), rsync.cpu_per_gb()
        shown = f"{mine:.2f} vs {theirs:.2f} s/GB"
        out.append(Target(name, mine, f"<= {theirs:.2f}", mine <= theirs, shown))
    else:
        out.append(_no_data(name))
    name = f"{tag} peak RSS < {TARGET_RSS_MIB:.0f} MiB per process"
    if not pull.ok:
        return [*out, _no_data(name)]
    worst = max(pull.rss_client_mib, pull.rss_server_mib)
    shown = f"pull {pull.rss_client_mib:.0f} MiB, serve {pull.rss_server_mib:.0f} MiB"
    if worst >= TARGET_RSS_MIB:  # help tell heap growth from mmap-ed file pages
        last = pull.runs[-1].extra
        shown += (
            f" (serve now: anon {last.get('serve_rss_anon_kib', 0) / KIB:.0f} MiB,"
            f" file-backed {last.get('serve_rss_file_kib', 0) / KIB:.0f} MiB)"
        )
    limit = f"< {TARGET_RSS_MIB:.0f}"
    return [*out, Target(name, worst, limit, worst < TARGET_RSS_MIB, shown)]


def evaluate_targets(tools: dict[str, ToolResult], p2p: P2pResults | None) -> list[Target]:
    if p2p is None:
        return []
    out = [t for n, pull in p2p.pulls.items() for t in _pull_targets(f"pull x{n}", pull, tools)]
    rate = p2p.publish.get("hash_gb_per_s")
    name, need = f"publish hashing >= {TARGET_HASH_GBPS:g} GB/s", f">= {TARGET_HASH_GBPS:g}"
    if rate is None:
        return [*out, _no_data(name, need)]
    return [*out, Target(name, rate, need, rate >= TARGET_HASH_GBPS, f"{rate:.2f} GB/s")]


def _table(tools: dict[str, ToolResult], rows: list[ToolResult]) -> list[str]:
    head = (
        f"{'tool':<20}{'median s':>10}{'min-max s':>13}{'MB/s':>10}{'% raw':>8}{'CPU s/GB':>10}"
        f"{'(cli+srv)':>14}{'RSS cli MiB':>13}{'RSS srv MiB':>13}{'busy/other/iow%':>17}"
    )
    lines = [head, "-" * len(head)]
    raw = tools.get("raw")
    for t in rows:
        if not t.ok:
            lines.append(f"{t.label:<20}  FAILED: {(t.error or 'no runs').splitlines()[0]}")
            continue
        pct = f"{100 * t.mbps / raw.mbps:.0f}%" if raw is not None and raw.ok else "-"
        split = f"{t.cpu_per_gb('client'):.2f}+{t.cpu_per_gb('server'):.2f}"
        busy, iowait = t.system_median("busy"), t.system_median("iowait")
        sysload = f"{100 * busy:.0f}/{100 * t.other_share():.0f}/{100 * iowait:.0f}"
        walls = [r.wall for r in t.runs]
        spread = f"{min(walls):.2f}-{max(walls):.2f}"
        lines.append(
            f"{t.label:<20}{t.median_s:>10.3f}{spread:>13}{t.mbps:>10.1f}{pct:>8}"
            f"{t.cpu_per_gb():>10.2f}{split:>14}{t.rss_client_mib:>13.1f}"
            f"{t.rss_server_mib:>13.1f}{sysload:>17}"
        )
    noisy = [
        f"{t.label} {100 * t.other_share():.0f}%" for t in rows if t.ok and t.other_share() > 0.1
    ]
    if noisy:
        lines.append(
            "WARNING: processes not measured here used a noticeable share of the machine's "
            f"CPU during the timed copies ({', '.join(noisy)}); numbers are noisy, rerun on an "
            "idle machine (--json lists the top processes per run)"
        )
    return lines


def _p2p_summary(tools: dict[str, ToolResult], p2p: P2pResults) -> list[str]:
    lines = [""]
    if p2p.publish:
        pub, rate = p2p.publish, p2p.publish.get("hash_gb_per_s")
        lines.append(
            f"publish: JSON bytes={pub['json'].get('bytes')} seconds={pub['json'].get('seconds')}"
            f" -> hashing {'n/a' if rate is None else f'{rate:.2f} GB/s'}; whole command "
            f"{pub['wall_seconds']:.2f} s ({pub['wall_gb_per_s']:.2f} GB/s), "
            f"cpu {pub['cpu_seconds']:.2f} s, peak RSS {pub['peak_rss_mib']:.0f} MiB"
        )
    for n, pull in p2p.pulls.items():
        if pull.ok:
            bases = [(name, tools.get(name)) for name in ("scp", "rsync", "raw")]
            ratios = [f"/{k} {pull.mbps / b.mbps:.2f}x" for k, b in bases if b is not None and b.ok]
            own = [r.extra.get("seconds") for r in pull.runs]
            lines.append(
                f"p2pckpt x{n} throughput ratio: {', '.join(ratios) or 'no baselines'}; "
                f"pull's own 'seconds': {own}"
            )
    if p2p.error:
        lines.append(f"p2pckpt FAILED: {p2p.error.splitlines()[0]}")
    return lines


def render(
    ckpt_info: dict[str, Any],
    env_info: dict[str, Any],
    tools: dict[str, ToolResult],
    p2p: P2pResults | None,
    targets: list[Target],
    repeat: int,
) -> str:
    nbytes = ckpt_info["bytes"]
    lines = [
        "",
        f"checkpoint: {ckpt_info['files']} files, {nbytes:,} bytes ({human_bytes(nbytes)}) "
        f"at {ckpt_info['path']}",
        f"machine: {env_info['cpus']} CPUs, kernel {env_info['kernel']}, "
        f"python {env_info['python']}",
    ]
    if "ssh" in env_info:
        s = env_info["ssh"]
        lines.append(
            f"ssh: {s.get('ssh_version', '?')}; default cipher (ssh -G first choice) "
            f"{s.get('cipher_default', '?')}, negotiated {s.get('cipher_negotiated', '?')} "
            f"MAC {s.get('mac_negotiated', '?')} compression "
            f"{s.get('compression_negotiated', '?')}; scp mode {s.get('scp_mode', '?')}; "
            f"{s.get('rsync_version', '?')}"
        )
    busy = env_info.get("busy_before_start", float("nan"))
    lines += [
        f"client peak RSS: {env_info['peak_rss_method']}; machine CPU busy before start: "
        f"{100 * busy:.0f}%",
        f"median of {repeat} timed run(s) after 1 warm-up; page cache warm; 1 MB = 1e6 bytes",
        "",
    ]
    rows = list(tools.values()) + (list(p2p.pulls.values()) if p2p else [])
    lines += _table(tools, rows)
    if p2p is not None:
        lines += _p2p_summary(tools, p2p)
    lines += [f"note ({t.label}): {n}" for t in rows for n in t.notes if "downloaded" in n]
    if targets:
        lines += ["", "targets:"]
        lines += [f"  [{tg.status()}] {tg.name:<46} {tg.shown}" for tg in targets]
    lines += [
        "",
        "counted: client CPU/RSS = wait4 of the client process and its reaped children; "
        "server CPU = /proc tree delta (utime+stime+cutime+cstime) of our sshd or "
        "p2pckpt serve; server RSS = VmHWM (sshd: sampled over per-connection processes); "
        "busy/other/iow% = machine-wide CPU busy share, share busy with processes not "
        "measured here (noise), iowait share, during the timed copies (median, /proc/stat).",
    ]
    return "\n".join(lines)


def json_report(
    ckpt_info: dict[str, Any],
    env_info: dict[str, Any],
    config: dict[str, Any],
    tools: dict[str, ToolResult],
    p2p: P2pResults | None,
    targets: list[Target],
) -> dict[str, Any]:
    """The ``--json`` document: everything in the table plus every run's raw numbers."""
    pulls = {} if p2p is None else {str(n): t.to_json() for n, t in p2p.pulls.items()}
    return {
        "checkpoint": ckpt_info,
        "environment": env_info,
        "config": config,
        "tools": {k: v.to_json() for k, v in tools.items()},
        "p2pckpt": None
        if p2p is None
        else {"error": p2p.error, "publish": p2p.publish, "pull": pulls},
        "targets": [
            {
                "name": t.name,
                "value": t.value,
                "threshold": t.threshold,
                "status": t.status().strip(),
                "shown": t.shown,
            }
            for t in targets
        ],
    }
