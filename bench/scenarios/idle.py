"""4. Many connections: 2 000 idle keep-alive connections to the proxy (each sent one
GET /sdapi/v1/progress and stays open, held by bench/idle_conns.py), plus wrk on 16
connections for a fixed duration; the same load without the idle connections alternates
with it. Reported: the proxy's resident memory (VmRSS sampled every 10 ms, VmHWM), its open
file descriptors, and the load's p99 and throughput with and without the idle connections.
A fresh proxy, so its memory is this scenario's."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import os
from pathlib import Path

from benchlib import procstat, servers, stats, wrk
from benchlib.procs import pinned

HOLDER = Path(__file__).resolve().parents[1] / "idle_conns.py"
PATH = "/sdapi/v1/progress"


def run(ctx) -> dict:
    base = ctx.base()
    count = ctx.settings.idle_connections
    proxy = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [base["sim"].url], name="proxy-idle")
    rounds = []
    try:
        idle_status = procstat.status(proxy.pid)
        wrk.run(proxy.url + PATH, 16, 1, ctx.client_cpus)  # warm-up
        for r in range(ctx.settings.rounds):
            result = {}
            for mode in stats.rotate(["without", "with"], r):
                result[mode] = measure(ctx, proxy, count if mode == "with" else 0)
            rounds.append(result)
            ctx.log(f"idle r{r+1}: " + ", ".join(
                f"{m}: p99 {result[m]['wrk']['p99_us']}us rss {result[m]['max_rss_mib']:.1f} MiB fds {result[m]['max_fds']}"
                for m in ("without", "with")))
    finally:
        ctx.procs.stop(proxy.proc)
    summary = {}
    for mode in ("without", "with"):
        summary[mode] = {
            "p99_us": stats.median(r[mode]["wrk"]["p99_us"] for r in rounds),
            "p50_us": stats.median(r[mode]["wrk"]["p50_us"] for r in rounds),
            "rps": stats.median(r[mode]["wrk"]["rps"] for r in rounds),
            "max_rss_mib": stats.median(r[mode]["max_rss_mib"] for r in rounds),
            "max_rss_mib_any_round": max(r[mode]["max_rss_mib"] for r in rounds),
            "hwm_mib_end": max(r[mode]["hwm_mib"] for r in rounds),
            "max_fds": max(r[mode]["max_fds"] for r in rounds),
            "errors": sum(r[mode]["wrk"]["errors"] for r in rounds),
        }
    summary["with"]["held_open_min"] = min(r["with"]["holder"]["done"]["still_open"] for r in rounds)
    summary["p99_ratio_with_to_without"] = stats.median(
        r["with"]["wrk"]["p99_us"] / r["without"]["wrk"]["p99_us"] for r in rounds)
    summary["rps_ratio_with_to_without"] = stats.median(
        r["with"]["wrk"]["rps"] / r["without"]["wrk"]["rps"] for r in rounds)
    return {"idle_connections": count, "load_connections": 16, "path": PATH,
            "seconds_per_run": ctx.settings.idle_seconds, "proxy_idle_at_start": idle_status,
            "rounds": rounds, "summary": summary}


def measure(ctx, proxy, count: int) -> dict:
    holder = None
    out = {}
    try:
        if count:
            port = proxy.url.rsplit(":", 1)[1]
            argv = pinned([sys.executable, str(HOLDER), port, str(count), PATH, "120"], ctx.client_cpus)
            holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
            ready = json.loads(read_line(holder, 90))
            if ready["open"] < count:
                raise RuntimeError(f"only {ready['open']} of {count} idle connections opened: {ready}")
            out["holder"] = {"ready": ready}
            out["held_status_before_load"] = procstat.status(proxy.pid)
        with procstat.Sampler(proxy.pid) as s:
            out["wrk"] = wrk.run(proxy.url + PATH, 16, ctx.settings.idle_seconds, ctx.client_cpus)
        st = procstat.status(proxy.pid)
        out.update(max_rss_mib=s.max_rss_mib, max_fds=s.max_fds, rss_mib_after=st["rss_mib"], hwm_mib=st["hwm_mib"])
        if holder:
            holder.stdin.write("stop\n")
            holder.stdin.flush()
            out["holder"]["done"] = json.loads(read_line(holder, 30))
            holder.wait(timeout=30)
    finally:
        if holder and holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
    return out


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"idle_conns.py said nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"idle_conns.py exited ({proc.poll()})")
    return line
