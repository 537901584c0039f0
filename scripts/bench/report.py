"""The report: one results table per checkpoint shape, p2pckpt's ratios against every
baseline variant and against each tool's fastest, the issue's targets (PASS/MISS), the
machine's limits, the flat-memory table, and the JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .p2p import P2pResults
from .results import ToolResult
from .units import KIB, human_bytes

TARGET_VS_SCP = 1.5
TARGET_VS_RSYNC = 1.2
TARGET_RSS_MIB = 80.0
TARGET_HASH_GBPS = 1.0
BASELINES = ("scp", "rsync")


@dataclass
class Target:
    name: str
    value: float | None
    threshold: str
    passed: bool | None
    shown: str

    def status(self) -> str:
        return "n/a " if self.passed is None else ("PASS" if self.passed else "MISS")

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "value": self.value, "threshold": self.threshold}
        return out | {"status": self.status().strip(), "shown": self.shown}


@dataclass
class ShapeResult:
    """Everything measured on one checkpoint shape."""

    shape: str
    ckpt_info: dict[str, Any]
    tools: dict[str, ToolResult] = field(default_factory=dict)
    p2p: P2pResults | None = None
    targets: list[Target] = field(default_factory=list)

    def rows(self) -> list[ToolResult]:
        return list(self.tools.values()) + (list(self.p2p.pulls.values()) if self.p2p else [])


def _no_data(name: str, threshold: str = "") -> Target:
    return Target(name, None, threshold, None, "no data")


def fastest(tools: dict[str, ToolResult], family: str) -> ToolResult | None:
    """The variant of ``family`` (e.g. every scp cipher) with the smallest median time."""
    ok = [t for t in tools.values() if t.family == family and t.ok]
    return min(ok, key=lambda t: t.median_s) if ok else None


def _cheapest(tools: dict[str, ToolResult], family: str, part: str) -> ToolResult | None:
    ok = [t for t in tools.values() if t.family == family and t.ok]
    return min(ok, key=lambda t: t.cpu_per_gb(part)) if ok else None


def _pull_targets(tag: str, pull: ToolResult, tools: dict[str, ToolResult]) -> list[Target]:
    out: list[Target] = []
    for family, need in (("scp", TARGET_VS_SCP), ("rsync", TARGET_VS_RSYNC)):
        name, base = f"{tag} speed >= {need}x fastest {family}", fastest(tools, family)
        if pull.ok and base is not None:
            ratio = base.median_s / pull.median_s
            shown = f"{ratio:.2f}x vs {base.label}"
            out.append(Target(name, ratio, f">= {need}", ratio >= need, shown))
        else:
            out.append(_no_data(name, f">= {need}"))
    durable = fastest(tools, "rsync-fsync")  # rsync that fsyncs every file, as a pull does
    if pull.ok and durable is not None:
        ratio = durable.median_s / pull.median_s
        name = f"{tag} time <= rsync --fsync's"
        out.append(Target(name, ratio, ">= 1", ratio >= 1, f"{ratio:.2f}x vs {durable.label}"))
    for part in ("client", "server"):
        name = f"{tag} CPU s/GB {part} <= rsync's {part}"
        base = _cheapest(tools, "rsync", part)
        if pull.ok and base is not None:
            mine, theirs = pull.cpu_per_gb(part), base.cpu_per_gb(part)
            shown = f"{mine:.2f} vs {theirs:.2f} s/GB ({base.label}, the lowest)"
            out.append(Target(name, mine, f"<= {theirs:.2f}", mine <= theirs, shown))
        else:
            out.append(_no_data(name))
    for side in ("pull", "serve"):
        name = f"{tag} {side} peak RSS < {TARGET_RSS_MIB:.0f} MiB"
        if not pull.ok:
            out.append(_no_data(name))
            continue
        mib = pull.rss_client_mib if side == "pull" else pull.rss_server_mib
        shown = f"{mib:.0f} MiB"
        if side == "serve" and mib >= TARGET_RSS_MIB:  # heap growth or mmap-ed file pages?
            last = pull.runs[-1].extra
            shown += (
                f" (now: anon {last.get('serve_rss_anon_kib', 0) / KIB:.0f} MiB,"
                f" file-backed {last.get('serve_rss_file_kib', 0) / KIB:.0f} MiB)"
            )
        limit = f"< {TARGET_RSS_MIB:.0f}"
        out.append(Target(name, mib, limit, mib < TARGET_RSS_MIB, shown))
    return out


def evaluate_targets(tools: dict[str, ToolResult], p2p: P2pResults | None) -> list[Target]:
    if p2p is None:
        return []
    out = [t for n, pull in p2p.pulls.items() for t in _pull_targets(f"pull x{n}", pull, tools)]
    warm = p2p.publish.get("warm", {})
    rate = warm.get("hash_gb_per_s")
    name, need = f"publish (warm) hashing >= {TARGET_HASH_GBPS:g} GB/s", f">= {TARGET_HASH_GBPS:g}"
    if rate is None:
        out.append(_no_data(name, need))
    else:
        out.append(Target(name, rate, need, rate >= TARGET_HASH_GBPS, f"{rate:.2f} GB/s"))
    rss = [
        float(p2p.publish[m]["peak_rss_mib"])
        for m in ("cold", "warm")
        if "peak_rss_mib" in p2p.publish.get(m, {})
    ]
    name = f"publish peak RSS < {TARGET_RSS_MIB:.0f} MiB"
    if rss:
        worst = max(rss)
        limit = f"< {TARGET_RSS_MIB:.0f}"
        out.append(Target(name, worst, limit, worst < TARGET_RSS_MIB, f"{worst:.0f} MiB"))
    else:
        out.append(_no_data(name))
    return out


def _table(shape: ShapeResult) -> list[str]:
    head = (
        f"{'tool':<20}{'median s':>9}{'min-max s':>12}{'MB/s':>8}{'%raw':>6}"
        f"{'CPU s/GB cli':>13}{'srv':>6}{'RSS MiB cli':>12}{'srv':>6}{'busy/oth/iow%':>15}"
    )
    lines = [head, "-" * len(head)]
    raw = shape.tools.get("raw loopback")
    rows = shape.rows()
    best = {id(t) for f in BASELINES if (t := fastest(shape.tools, f)) is not None}
    for t in rows:
        label = t.label + ("*" if id(t) in best and len(_variants(shape, t.family)) > 1 else "")
        if not t.ok:
            lines.append(f"{label:<20} FAILED: {(t.error or 'no runs').splitlines()[0][:90]}")
            continue
        pct = f"{100 * t.mbps / raw.mbps:.0f}" if raw is not None and raw.ok else "-"
        busy, iowait = t.system_median("busy"), t.system_median("iowait")
        sysload = f"{100 * busy:.0f}/{100 * t.other_share():.0f}/{100 * iowait:.0f}"
        walls = [r.wall for r in t.runs]
        spread = f"{min(walls):.2f}-{max(walls):.2f}"
        lines.append(
            f"{label:<20}{t.median_s:>9.3f}{spread:>12}{t.mbps:>8.0f}{pct:>6}"
            f"{t.cpu_per_gb('client'):>13.2f}{t.cpu_per_gb('server'):>6.2f}"
            f"{t.rss_client_mib:>12.1f}{t.rss_server_mib:>6.1f}{sysload:>15}"
        )
    if best:
        lines.append("* = the fastest variant of its tool (p2pckpt's ratios use it)")
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


def _variants(shape: ShapeResult, family: str) -> list[ToolResult]:
    return [t for t in shape.tools.values() if t.family == family]


def _ratios(shape: ShapeResult, pull: ToolResult) -> list[str]:
    """p2pckpt against every baseline variant: speed-up (>1 = faster), CPU per side ratio
    (<1 = cheaper) and the fastest variant of each tool."""
    head = f"  {pull.label} vs{'':<9}{'speed-up':>9}{'CPU cli':>9}{'CPU srv':>9}{'CPU all':>9}"
    lines = [head]
    for t in [v for f in BASELINES for v in _variants(shape, f)] + [
        v for f in ("rsync-fsync", "raw", "raw+fsync") for v in _variants(shape, f)
    ]:
        if not t.ok:
            continue
        parts = [
            pull.cpu_per_gb(p) / t.cpu_per_gb(p) if t.cpu_per_gb(p) > 0 else float("nan")
            for p in ("client", "server", "total")
        ]
        lines.append(
            f"    {t.label:<20}{t.median_s / pull.median_s:>8.2f}x"
            + "".join(f"{x:>8.2f}x" for x in parts)
        )
    for family in BASELINES:
        base = fastest(shape.tools, family)
        if base is not None:
            lines.append(
                f"    fastest {family}: {base.label} -> p2pckpt speed-up "
                f"{base.median_s / pull.median_s:.2f}x"
            )
    return lines


def _publish_line(pub: dict[str, Any], dd_read: float | None) -> list[str]:
    out = []
    for mode in ("cold", "warm"):
        m = pub.get(mode)
        if not m:
            continue
        if "skipped" in m:
            out.append(f"  publish {mode}: skipped ({m['skipped']})")
            continue
        hash_rate = m.get("hash_gb_per_s")
        hashed = "n/a" if hash_rate is None else f"{hash_rate:.2f}"
        beside = "" if dd_read is None else f" | dd cold read {dd_read:.2f} GB/s"
        out.append(
            f"  publish {mode}: median {m['median_seconds']:.2f} s "
            f"({m['min_seconds']:.2f}-{m['max_seconds']:.2f}) = {m['gb_per_s']:.2f} GB/s "
            f"(JSON 'seconds': {hashed} GB/s){beside}; cpu {m['cpu_seconds']:.2f} s, "
            f"peak RSS {m['peak_rss_mib']:.0f} MiB"
        )
    return out


def _dd_read_rate(limits: dict[str, Any]) -> float | None:
    rate = limits.get("dd_read_cold", {}).get("gb_per_s")
    return rate if isinstance(rate, float) else None


def render_shape(shape: ShapeResult, limits: dict[str, Any]) -> list[str]:
    info = shape.ckpt_info
    lines = [
        "",
        f"=== shape {shape.shape}: {info['files']} files, {info['bytes']:,} bytes "
        f"({human_bytes(info['bytes'])}) at {info['path']}",
    ]
    lines += _table(shape)
    p2p = shape.p2p
    if p2p is not None:
        lines += _publish_line(p2p.publish, _dd_read_rate(limits))
        for pull in p2p.pulls.values():
            if pull.ok:
                lines += _ratios(shape, pull)
                own = [r.extra.get("seconds") for r in pull.runs]
                lines.append(f"    pull's own 'seconds': {own}")
        if p2p.error:
            lines.append(f"  p2pckpt FAILED: {p2p.error.splitlines()[0]}")
    rows = shape.rows()
    lines += [f"  note ({t.label}): {n}" for t in rows for n in t.notes if "downloaded" in n]
    if shape.targets:
        lines.append("  targets:")
        lines += [f"    [{tg.status()}] {tg.name:<44} {tg.shown}" for tg in shape.targets]
    return lines


def render_limits(limits: dict[str, Any]) -> list[str]:
    def rate(key: str) -> str:
        value = limits.get(key, {})
        if "gb_per_s" in value:
            return f"{value['gb_per_s']:.2f} GB/s ({human_bytes(value['bytes'])})"
        return str(value.get("skipped") or value.get("error", "n/a")).splitlines()[0]

    cpu = limits.get("cpu", {})

    def g(key: str) -> str:
        v = cpu.get(key)
        return f"{v:.2f}" if isinstance(v, float) else "n/a"

    read = limits.get("dd_read_cold", {})
    src = f" of {read['argv'][1][3:]}" if "argv" in read else ""
    return [
        "",
        "limits (same run): raw loopback = the 'raw loopback' rows above",
        f"  dd write bs=4M conv=fsync: {rate('dd_write_fsync')}",
        f"  dd cold read (caches dropped){src}: {rate('dd_read_cold')}",
        f"  AES-128-GCM 1 core: {g('aes128gcm_64KiB_gb_per_s')} GB/s (64 KiB records), "
        f"{g('aes128gcm_1024KiB_gb_per_s')} GB/s (1 MiB); AES-256-GCM: "
        f"{g('aes256gcm_64KiB_gb_per_s')} / {g('aes256gcm_1024KiB_gb_per_s')} GB/s",
        f"  BLAKE3: {g('blake3_1thread_gb_per_s')} GB/s 1 thread, {g('blake3_mt_gb_per_s')} "
        f"GB/s {cpu.get('blake3_mt_threads', '?')} threads"
        + (f" ({cpu['blake3_error']})" if "blake3_error" in cpu else ""),
    ]


def render_flat(flat: list[dict[str, Any]]) -> list[str]:
    if not flat:
        return []
    head = (
        f"{'size':>10}{'publish cold s':>16}{'warm s':>8}{'pull s':>8}{'MB/s':>7}"
        f"{'RSS publish':>13}{'RSS serve':>11}{'RSS pull':>10}  (MiB)"
    )
    lines = ["", "flat memory: p2pckpt publish + pull of one file per size", head]
    for f in flat:
        size = human_bytes(f["size"])
        if "skipped" in f or "error" in f:
            lines.append(
                f"{size:>10}  {'SKIPPED' if 'skipped' in f else 'FAILED'}: "
                f"{(f.get('skipped') or f.get('error') or '').splitlines()[0]}"
            )
            continue
        pub = f["publish"]
        cold = pub.get("cold", {}).get("median_seconds")
        warm = pub.get("warm", {}).get("median_seconds")
        pull = f["pull"]
        rss_pub = max(pub.get(m, {}).get("peak_rss_mib", 0.0) for m in ("cold", "warm", "setup"))
        lines.append(
            f"{size:>10}{'-' if cold is None else f'{cold:.2f}':>16}"
            f"{'-' if warm is None else f'{warm:.2f}':>8}"
            f"{pull.get('median_seconds', float('nan')):>8.2f}"
            f"{pull.get('mb_per_s', float('nan')):>7.0f}{rss_pub:>13.1f}"
            f"{pull.get('peak_rss_mib_server', float('nan')):>11.1f}"
            f"{pull.get('peak_rss_mib_client', float('nan')):>10.1f}"
        )
    return lines


def render(
    env_info: dict[str, Any],
    config: dict[str, Any],
    shapes: list[ShapeResult],
    limits: dict[str, Any],
    flat: list[dict[str, Any]],
) -> str:
    lines = [
        "",
        f"machine: {env_info['cpus']} CPUs, kernel {env_info['kernel']}, "
        f"python {env_info['python']}; busy before start "
        f"{100 * env_info.get('busy_before_start', float('nan')):.0f}%",
    ]
    if "ssh" in env_info:
        s = env_info["ssh"]
        negotiated = ", ".join(
            f"{k[11:-1]} -> {v}" for k, v in s.items() if k.startswith("negotiated[")
        )
        lines.append(
            f"ssh: {s.get('ssh_version', '?')}; ciphers {negotiated or '?'}; MAC "
            f"{s.get('mac_negotiated', '?')}; scp mode {s.get('scp_mode', '?')}; "
            f"{s.get('rsync_version', '?')}"
        )
    cache = "COLD: caches dropped before every run (warm-ups too)" if config["cold"] else "warm"
    lines += [
        f"client peak RSS: {env_info['peak_rss_method']}",
        f"median of {config['repeat']} timed run(s) after 1 warm-up; page cache {cache}; "
        f"1 MB = 1e6 bytes; CPU s/GB per side; RSS target < {TARGET_RSS_MIB:.0f} MiB",
    ]
    for shape in shapes:
        lines += render_shape(shape, limits)
    lines += render_limits(limits)
    lines += render_flat(flat)
    lines += [
        "",
        "counted: client CPU/RSS = wait4 of the client and its reaped children (RSS: GNU time "
        "%M); server CPU = /proc tree delta (utime+stime+cutime+cstime) of our sshd or "
        "p2pckpt serve; server RSS = VmHWM (sshd: sampled every 200 ms over per-connection "
        "processes); speed-up = baseline median time / p2pckpt's; CPU ratio = p2pckpt / "
        "baseline (< 1 is cheaper); busy/oth/iow% = machine-wide busy share, busy share of "
        "processes not measured here (noise), iowait share during the timed copies.",
    ]
    return "\n".join(lines)


def json_report(
    env_info: dict[str, Any],
    config: dict[str, Any],
    shapes: list[ShapeResult],
    limits: dict[str, Any],
    flat: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``--json`` document: everything in the tables plus every run's raw numbers."""

    def shape_json(s: ShapeResult) -> dict[str, Any]:
        p2p = s.p2p
        pulls = {} if p2p is None else {str(n): t.to_json() for n, t in p2p.pulls.items()}
        fast = {f: t.label for f in BASELINES if (t := fastest(s.tools, f)) is not None}
        return {
            "checkpoint": s.ckpt_info,
            "tools": {k: v.to_json() for k, v in s.tools.items()},
            "fastest": fast,
            "p2pckpt": None
            if p2p is None
            else {"error": p2p.error, "publish": p2p.publish, "pull": pulls},
            "targets": [t.to_json() for t in s.targets],
        }

    return {
        "environment": env_info,
        "config": config,
        "shapes": {s.shape: shape_json(s) for s in shapes},
        "limits": limits,
        "flat": flat,
    }
