#!/usr/bin/env python3
"""The benchmark harness (bench/run calls it): forge-vram-proxy against direct access to
forge-sim and against nginx, and the GPU time its decisions save.

    bench/harness.py [--quick] [--only small,big,nothing,idle,decisions] [--out DIR]

Writes DIR/latest.json (everything), DIR/latest.md (the tables) and DIR/chart.png. DIR is
bench/results/ for a full run and bench/results/quick/ for --quick."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib import chart, machine, report, servers, targets  # noqa: E402
from benchlib.procs import Processes  # noqa: E402
from scenarios import big, decisions, idle, nothing, small  # noqa: E402

SCENARIOS = {"small": small, "big": big, "nothing": nothing, "idle": idle, "decisions": decisions}


@dataclass(frozen=True)
class Settings:
    rounds: int  # alternating rounds per comparison
    wrk_seconds: float  # one wrk run, small requests
    big_requests: int  # requests per contender per round, big bodies
    nothing_seconds: float  # one wrk run, intercepted-nothing-to-change
    idle_seconds: float  # one wrk run with / without the idle connections
    idle_connections: int
    decision_requests: int  # the first N of bench/workloads/mixed.json
    decision_repeats: int  # each way this many times (alternating)
    decision_time_scale: float  # forge-sim --time-scale for the decision workload
    decision_clients: int = 8


MODES = {
    "quick": Settings(rounds=3, wrk_seconds=1, big_requests=3, nothing_seconds=1, idle_seconds=1,
                      idle_connections=2000, decision_requests=40, decision_repeats=1,
                      decision_time_scale=0.002),
    "full": Settings(rounds=5, wrk_seconds=4, big_requests=5, nothing_seconds=3, idle_seconds=4,
                     idle_connections=2000, decision_requests=120, decision_repeats=3,
                     decision_time_scale=0.002),
}


class Context:
    """What every scenario gets: settings, the process set, CPU pinning, a temp folder,
    and the shared servers of scenarios 1-3 (started on first use)."""

    def __init__(self, settings: Settings, procs: Processes, workdir: Path, server_cpus, client_cpus):
        self.settings = settings
        self.procs = procs
        self.workdir = workdir
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self._base = None
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {text}", flush=True)

    def base(self) -> dict:
        """forge-sim (12 GiB, --time-scale 0, 2 kB images), the proxy in front of it and
        nginx with as many workers as the proxy's tokio runtime has worker threads."""
        if self._base is None:
            sim = servers.start_sim(self.procs, self.server_cpus, time_scale=0.0, image_bytes=2000)
            proxy = servers.start_proxy(self.procs, self.server_cpus, self.workdir, [sim.url])
            workers = tokio_workers(self.server_cpus)
            nginx = servers.start_nginx(self.procs, self.server_cpus, self.workdir, sim.url, workers)
            bare = servers.start_bare(self.procs, self.server_cpus, sim.url)
            self._base = {"sim": sim, "proxy": proxy, "nginx": nginx, "bare": bare, "workers": workers,
                          "proxy_threads": thread_names(proxy.pid)}
            self.log(f"servers: forge-sim {sim.url}, proxy {proxy.url}, nginx {nginx.url} ({workers} workers)")
        return self._base


def tokio_workers(cpus: str | None) -> int:
    """Tokio's default worker count: the CPUs this process may run on (available_parallelism
    follows the taskset affinity the proxy is started with)."""
    if not cpus:
        return os.cpu_count() or 1
    count = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def thread_names(pid: int) -> dict:
    names: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        names[name] = names.get(name, 0) + 1
    return names


def pinning() -> tuple[str | None, str | None, str]:
    """Servers on CPU 0, load generators and clients on CPU 1 (2-core machine); overridable
    with BENCH_SERVER_CPUS / BENCH_CLIENT_CPUS; no pinning on one core."""
    n = os.cpu_count() or 1
    server = os.environ.get("BENCH_SERVER_CPUS") or ("0" if n >= 2 else None)
    client = os.environ.get("BENCH_CLIENT_CPUS") or (str(n - 1) if n >= 2 else None)
    how = (f"servers (forge-sim, nginx, forge-vram-proxy) on CPU {server}; load generators (wrk, "
           f"the Python clients, the idle-connection holder, this harness) on CPU {client}; with taskset"
           if server else "no pinning (one CPU)")
    return server, client, how


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short rounds, 40 workload requests (under 3 minutes)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, help="output folder")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    settings = MODES[mode]
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    for name in chosen:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    out = args.out or (BENCH / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    server_cpus, client_cpus, how = pinning()
    if client_cpus:
        os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})

    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    results = {
        "mode": mode,
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": "bench/run" + (" --quick" if args.quick else ""),
        "settings": asdict(settings),
        "machine": machine.machine(),
        "tools": machine.tools(),
        "pinning": {"server_cpus": server_cpus, "client_cpus": client_cpus, "description": how},
        "scenarios": {},
        "failures": {},
    }
    print(f"bench: {mode} run, {how}", flush=True)
    scratch = ROOT_TMP / "run"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=scratch) as tmp, Processes(Path(tmp)) as procs:
        ctx = Context(settings, procs, Path(tmp), server_cpus, client_cpus)
        for name in chosen:
            ctx.log(f"== {name}")
            t = time.monotonic()
            try:
                results["scenarios"][name] = SCENARIOS[name].run(ctx)
            except Exception as e:  # record it, go on with the others
                traceback.print_exc()
                results["failures"][name] = f"{type(e).__name__}: {e}"
            ctx.log(f"== {name} took {time.monotonic() - t:.1f}s")
        if ctx._base:
            results["servers"] = {
                "nginx_workers": ctx._base["workers"],
                "proxy_threads_seen": ctx._base["proxy_threads"],
                "proxy_config": ctx._base["proxy"].config["toml"],
                "nginx_conf": ctx._base["nginx"].config["conf"],
                "sim_argv": ctx._base["sim"].config["argv"],
            }
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["targets"] = targets.evaluate(results)
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(report.markdown(results))
    try:
        chart.draw(results, out / "chart.png")
    except Exception:
        traceback.print_exc()
        results["failures"]["chart"] = "chart failed"
    print(report.targets_text(results))
    print(f"bench: {mode} run took {results['duration_s']}s; wrote {out}/latest.json, latest.md, chart.png")
    return 1 if results["failures"] else 0


ROOT_TMP = BENCH.parent / "target" / "bench-tmp"

if __name__ == "__main__":
    sys.exit(main())
