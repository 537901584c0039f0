"""The scp and rsync baselines, through a private sshd on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import BenchError, log
from .procfs import RssSampler, SystemCpu, tree_cpu_seconds, wait_no_children
from .procs import run, run_measured, stop_process, tail, track
from .results import Job, Run, ToolResult, repeat_runs

SSH_TOOLS = ("sshd", "ssh", "scp", "ssh-keygen", "rsync")
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
APT_TIMEOUT = 900.0
PACKAGES = ("openssh-server", "openssh-client", "rsync")
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {home}/ssh_host_ed25519_key
PidFile {home}/sshd.pid
AuthorizedKeysFile {home}/authorized_keys
AllowUsers {user}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel ERROR
Subsystem sftp internal-sftp
"""


def find_exe(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATH]))


def ensure_ssh_tools() -> dict[str, str]:
    """Find sshd/ssh/scp/ssh-keygen/rsync, installing them with apt-get if needed."""
    missing = [t for t in SSH_TOOLS if find_exe(t) is None]
    if missing:
        if os.geteuid() != 0 or find_exe("apt-get") is None:
            raise BenchError(
                f"missing {', '.join(missing)}; install {' '.join(PACKAGES)} "
                "(needs root and apt-get) or pass --skip-ssh"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = not policy.exists()
        if made_policy:
            log(
                f"writing a temporary {policy} (exit 101) so the package does not start "
                "the system sshd"
            )
            policy.write_text("#!/bin/sh\n# temporary, from scripts/bench_transfer.py\nexit 101\n")
            policy.chmod(0o755)
        try:
            log(f"missing {', '.join(missing)}: running apt-get update")
            run(["apt-get", "update"], "apt-get update", APT_TIMEOUT, env)
            log(f"running apt-get install -y {' '.join(PACKAGES)}")
            run(["apt-get", "install", "-y", *PACKAGES], "apt-get install", APT_TIMEOUT, env)
        finally:
            if made_policy:
                policy.unlink(missing_ok=True)
        log(f"installed {' '.join(PACKAGES)}")
    tools = {t: find_exe(t) for t in SSH_TOOLS}
    still = [t for t, p in tools.items() if p is None]
    if still:
        raise BenchError(f"still missing after install: {', '.join(still)}")
    return {t: str(p) for t, p in tools.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    tools: dict[str, str]
    home: Path
    user: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    made_privsep: Path | None = None

    @property
    def key(self) -> Path:
        return self.home / "client_ed25519"

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1"

    def client_opts(self) -> list[str]:
        opts = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes"]
        return [*(arg for opt in opts for arg in ("-o", opt)), "-i", str(self.key)]

    def ssh_argv(self) -> list[str]:
        return [self.tools["ssh"], *self.client_opts(), "-p", str(self.port)]

    def start(self) -> None:
        self.home.mkdir(parents=True)
        self.home.chmod(0o700)
        for who, path in (("host", self.home / "ssh_host_ed25519_key"), ("client", self.key)):
            argv = [self.tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", ""]
            run([*argv, "-C", f"bench-{who}", "-f", path], f"ssh-keygen ({who})")
        shutil.copyfile(self.key.with_suffix(".pub"), self.home / "authorized_keys")
        privsep = Path("/run/sshd")
        if os.geteuid() == 0 and not privsep.exists():
            privsep.mkdir(mode=0o755, parents=True)
            self.made_privsep = privsep
        config = self.home / "sshd_config"
        for attempt in range(3):
            self.port = free_port()
            config.write_text(SSHD_CONFIG.format(port=self.port, home=self.home, user=self.user))
            run([self.tools["sshd"], "-t", "-f", config], "sshd -t (config check)")
            with open(self.home / "sshd.log", "ab") as errlog:
                self.proc = track(
                    subprocess.Popen(
                        [self.tools["sshd"], "-D", "-e", "-f", str(config)],
                        stdin=subprocess.DEVNULL,
                        stdout=errlog,
                        stderr=errlog,
                        start_new_session=True,
                    )
                )
            if self._wait_ready(self.proc, 10.0):
                log(f"own sshd (pid {self.proc.pid}) listening on 127.0.0.1:{self.port}")
                return
            stop_process(self.proc)
            log(f"sshd did not come up on port {self.port} (attempt {attempt + 1})")
        raise BenchError(f"sshd did not start; log:\n{tail((self.home / 'sshd.log').read_text())}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as s,
            ):
                if s.recv(8).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            log(f"stopped own sshd (pid {self.proc.pid})")
            self.proc = None
        if self.made_privsep is not None:
            with contextlib.suppress(OSError):
                self.made_privsep.rmdir()
            self.made_privsep = None

    def describe(self) -> dict[str, str]:
        """Versions, scp mode and the cipher: ssh -G's first choice and what ssh -v negotiated."""
        info: dict[str, str] = {}
        ver = run([self.tools["ssh"], "-V"], "ssh -V")
        info["ssh_version"] = (ver.stderr or ver.stdout).strip()
        for line in run([*self.ssh_argv(), "-G", self.target], "ssh -G").stdout.splitlines():
            key, _, value = line.partition(" ")
            if key in ("ciphers", "macs", "kexalgorithms", "compression"):
                info[f"ssh_G_{key}"] = value
        info["cipher_default"] = info.get("ssh_G_ciphers", "?").split(",")[0]
        v = run([*self.ssh_argv(), "-v", self.target, "true"], "ssh -v (connectivity check)")
        m = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+) compression: (\S+)", v.stderr)
        keys = ("cipher_negotiated", "mac_negotiated", "compression_negotiated")
        info.update(zip(keys, m.groups() if m else (), strict=False))
        rv = run([self.tools["rsync"], "--version"], "rsync --version").stdout
        info["rsync_version"] = " ".join(rv.split("\n", 1)[0].split()) if rv else "?"
        major = re.search(r"OpenSSH_(\d+)", info["ssh_version"])  # OpenSSH >= 9 scp uses SFTP
        sftp = major is not None and int(major.group(1)) >= 9
        info["scp_mode"] = "SFTP (OpenSSH >= 9 default)" if sftp else "legacy scp/rcp"
        return info


def bench_ssh_tool(
    job: Job, label: str, server: SshServer, make_argv: Callable[[Path], list[str]]
) -> ToolResult:
    result = ToolResult(label, job.nbytes)
    result.notes.append(
        "client CPU/RSS via wait4; server = own sshd tree via /proc "
        "(CPU: utime+stime+cutime+cstime delta; RSS: sampled VmHWM)"
    )
    assert server.proc is not None
    sshd_pid = server.proc.pid

    def one(dest: Path, _tag: str) -> Run:
        wait_no_children(sshd_pid)
        before = tree_cpu_seconds(sshd_pid)
        with RssSampler(sshd_pid) as sampler, SystemCpu() as system:
            r = run_measured(make_argv(dest), job.timeout)
        wait_no_children(sshd_pid)
        after = tree_cpu_seconds(sshd_pid)
        r.check(label)
        rss = (r.maxrss_kib, sampler.peak_kib)
        return Run(r.wall, r.cpu, after - before, *rss, {"system": system.result})

    return repeat_runs(result, job, label, one)


def _argv_for(base: list[str], slash: bool) -> Callable[[Path], list[str]]:
    """The client argv for one destination (rsync wants ``DEST/``)."""

    def make(dest: Path) -> list[str]:
        return [*base, f"{dest}/" if slash else str(dest)]

    return make


def cipher_label(cipher: str) -> str:
    """Short row label: ``aes128-gcm@openssh.com`` -> ``aes128-gcm``; ``default`` stays."""
    return cipher.split("@", 1)[0]


def negotiated_cipher(server: SshServer, cipher: str) -> str:
    """What ``ssh -v [-c CIPHER]`` negotiates server->client (raises if refused)."""
    opt = [] if cipher == "default" else ["-c", cipher]
    v = run([*server.ssh_argv(), *opt, "-v", server.target, "true"], f"ssh -v -c {cipher}")
    m = re.search(r"kex: server->client cipher: (\S+)", v.stderr)
    return m.group(1) if m else "?"


def bench_scp_rsync(
    job: Job, ciphers: Sequence[str] = ("default",)
) -> tuple[dict[str, ToolResult], dict[str, str] | None]:
    """Start our sshd, run scp and rsync once per cipher (``default`` = no ``-c``), stop it;
    (results keyed by row label, ssh info for the report)."""
    tools: dict[str, ToolResult] = {}
    info: dict[str, str] | None = None
    server: SshServer | None = None
    labels = [(c, f"{tool} [{cipher_label(c)}]") for tool in ("scp", "rsync") for c in ciphers]
    try:
        exes = ensure_ssh_tools()
        server = SshServer(exes, job.scratch / "sshd", pwd.getpwuid(os.getuid()).pw_name)
        server.start()
        info = server.describe()
        negotiated = info.get("cipher_negotiated", "?")
        log(f"ssh cipher: default {info['cipher_default']}, negotiated {negotiated}")
        src = f"{server.target}:{job.ckpt}"
        for cipher in ciphers:
            got = negotiated_cipher(server, cipher)
            info[f"negotiated[{cipher}]"] = got
            log(f"ssh cipher {cipher}: negotiated {got}")
        for cipher in ciphers:
            opt = [] if cipher == "default" else ["-c", cipher]
            label = f"scp [{cipher_label(cipher)}]"
            scp = [exes["scp"], "-r", "-q", *server.client_opts(), *opt, "-P", str(server.port)]
            scp.append(src)
            tools[label] = bench_ssh_tool(job, label, server, _argv_for(scp, slash=False))
            tools[label].notes.append(f"cipher {info[f'negotiated[{cipher}]']}")
        for cipher in ciphers:
            opt = [] if cipher == "default" else ["-c", cipher]
            label = f"rsync [{cipher_label(cipher)}]"
            rsync = [exes["rsync"], "-a", "-e", shlex.join([*server.ssh_argv(), *opt]), f"{src}/"]
            tools[label] = bench_ssh_tool(job, label, server, _argv_for(rsync, slash=True))
            tools[label].notes.append(f"cipher {info[f'negotiated[{cipher}]']}")
        # Durable like a pull (every file fsynced): the bar for many small files.
        cipher = ciphers[0]
        opt = [] if cipher == "default" else ["-c", cipher]
        label = f"rsync --fsync [{cipher_label(cipher)}]"
        labels.append((cipher, label))
        ssh = shlex.join([*server.ssh_argv(), *opt])
        rsync = [exes["rsync"], "-a", "--fsync", "-e", ssh, f"{src}/"]
        tools[label] = bench_ssh_tool(job, label, server, _argv_for(rsync, slash=True))
        tools[label].notes.append(f"cipher {info[f'negotiated[{cipher}]']}")
    except BenchError as exc:
        log(f"ssh baselines FAILED: {exc}")
        for _, label in labels:
            tools.setdefault(label, ToolResult(label, job.nbytes, error=str(exc)))
    finally:
        if server is not None:
            server.stop()
    for label, tool in tools.items():
        tool.family = "rsync-fsync" if "--fsync" in label else label.split()[0]
    return tools, info
