"""Runs wrk (one thread on the client CPU) for a fixed duration and returns its numbers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .procs import pinned

SCRIPT = Path(__file__).resolve().parents[1] / "wrk" / "report.lua"


def run(
    url: str,
    connections: int,
    seconds: float,
    cpus: str | None,
    *,
    method: str | None = None,
    body_file: Path | None = None,
    threads: int = 1,
) -> dict:
    """`wrk -t1 -cN -dS --latency URL` with bench/wrk/report.lua. Returns requests/s,
    p50/p90/p99 latency in microseconds and the error counts."""
    env = dict(os.environ)
    if method:
        env["WRK_METHOD"] = method
    if body_file:
        env["WRK_BODY_FILE"] = str(body_file)
    duration = f"{max(1, round(seconds))}s"
    argv = pinned(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", duration, "--timeout", "10s",
         "--latency", "-s", str(SCRIPT), url],
        cpus,
    )
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status", "errors_timeout"))
    return r


def version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip().splitlines()[0]
