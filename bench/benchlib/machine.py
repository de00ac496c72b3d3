"""What the benchmark ran on and with: machine, tools and their versions."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

from . import servers, wrk


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (done.stdout + done.stderr).strip()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _dpkg_version(package: str) -> str | None:
    out = _run(["dpkg-query", "-W", "-f", "${Version}", package])
    return out if out and "no packages found" not in out and "unavailable" not in out else None


def machine() -> dict:
    cpu_model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = None
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "nproc": int(_run(["nproc", "--all"]) or 0),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": os_name,
        "hypervisor": "yes" if "hypervisor" in Path("/proc/cpuinfo").read_text() else "no",
        "loadavg_at_start": os.getloadavg(),
    }


def tools() -> dict:
    pip_freeze = _run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"])
    git = Path(__file__).resolve().parents[2]
    return {
        "forge-vram-proxy": _first_line(_run([str(servers.PROXY_BIN), "--version"])),
        "forge-sim": _first_line(_run([str(servers.SIM_BIN), "--version"])),
        "git_commit": _first_line(_run(["git", "-C", str(git), "rev-parse", "HEAD"])),
        "git_worktree_dirty": bool(_run(["git", "-C", str(git), "status", "--porcelain", "--", "src", "forge-sim", "Cargo.toml", "Cargo.lock"])),
        # Which uncommitted changes of the measured code were built (sha256 of the diff).
        "git_diff_sha256": hashlib.sha256(_run(["git", "-C", str(git), "diff", "HEAD", "--", "src", "forge-sim",
                                                "Cargo.toml", "Cargo.lock"]).encode()).hexdigest(),
        "rustc": _first_line(_run(["rustc", "--version"])),
        "cargo": _first_line(_run(["cargo", "--version"])),
        "build": "cargo build --release --locked -p forge-sim -p forge-vram-proxy",
        "binaries": str(servers.BIN_DIR),
        # With BENCH_BIN_DIR, what those binaries were built from (BENCH_SOURCE, free text).
        "binaries_source": os.environ.get("BENCH_SOURCE") or "this working tree",
        "nginx": _first_line(_run(["nginx", "-v"])),
        "nginx_debian_package": {p: _dpkg_version(p) for p in ("nginx-light", "nginx")},
        "wrk": wrk.version(),
        "wrk_debian_package": _dpkg_version("wrk"),
        "taskset": _first_line(_run(["taskset", "--version"])),
        "python": sys.version.split()[0],
        "python_packages": [l for l in pip_freeze.splitlines() if "==" in l],
    }
