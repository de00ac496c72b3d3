"""1. Small requests: GET /sdapi/v1/progress and GET /sdapi/v1/options with wrk at 1, 16 and
256 connections, fixed duration per run; direct, nginx and the proxy alternate in every
round, with a reference: "bare", a proxy of hyper's server and pooled client and nothing
else (examples/bare_hyper_proxy.rs), the floor for any proxy built on those parts. Reported:
requests/s, p50/p99, each one's ratio to direct, and the added p50 latency (contender's p50
minus direct's, paired within the round)."""

from __future__ import annotations

from benchlib import procstat, stats, wrk

ENDPOINTS = ["/sdapi/v1/progress", "/sdapi/v1/options"]
CONNECTIONS = [1, 16, 256]
CONTENDERS = ["direct", "nginx", "proxy", "bare"]


def run(ctx) -> dict:
    base = ctx.base()
    urls = {"direct": base["sim"].url, "nginx": base["nginx"].url, "proxy": base["proxy"].url,
            "bare": base["bare"].url}
    pgids = {"direct": None, "nginx": base["nginx"].pid, "proxy": base["proxy"].pid, "bare": base["bare"].pid}
    sim_pgid = base["sim"].pid
    seconds = ctx.settings.wrk_seconds
    cells = {f"{ep} c={c}": {"endpoint": ep, "connections": c, "rounds": []} for ep in ENDPOINTS for c in CONNECTIONS}
    # Warm-up: every contender once, so pools and caches are not measured cold.
    for name in CONTENDERS:
        for ep in ENDPOINTS:
            wrk.run(urls[name] + ep, 16, 1, ctx.client_cpus)
    for r in range(ctx.settings.rounds):
        for key, cell in cells.items():
            results = {}
            for name in stats.rotate(CONTENDERS, r):
                results[name] = with_cpu(lambda: wrk.run(urls[name] + cell["endpoint"], cell["connections"], seconds,
                                                         ctx.client_cpus), sim_pgid, pgids[name])
            cell["rounds"].append(results)
            ctx.log(f"small r{r+1} {key}: " + ", ".join(
                f"{n} {results[n]['rps']:.0f}/s p50 {results[n]['p50_us']}us" for n in CONTENDERS))
    for cell in cells.values():
        cell["summary"] = summarize(cell["rounds"])
    return {"seconds_per_run": seconds, "wrk_threads": 1, "cells": cells}


def with_cpu(load, sim_pgid: int, server_pgid: int | None) -> dict:
    """Runs `load` (wrk) and adds, per request, the CPU time (utime + stime, microseconds)
    and the context switches of forge-sim and of the contender's server (from /proc)."""
    groups = {"sim": sim_pgid, "server": server_pgid}
    before = {k: (procstat.cpu_seconds(g), procstat.context_switches(g)) for k, g in groups.items() if g}
    result = load()
    n = max(result["requests"], 1)
    for k, g in groups.items():
        if not g:
            result[f"{k}_cpu_us_per_request"] = result[f"{k}_switches_per_request"] = None
            continue
        cpu, (vol, invol) = procstat.cpu_seconds(g), procstat.context_switches(g)
        result[f"{k}_cpu_us_per_request"] = (cpu - before[k][0]) / n * 1e6
        result[f"{k}_switches_per_request"] = {"voluntary": (vol - before[k][1][0]) / n,
                                               "involuntary": (invol - before[k][1][1]) / n}
    return result


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for name in CONTENDERS:
        out[name] = {
            "rps": stats.median(r[name]["rps"] for r in rounds),
            "p50_us": stats.median(r[name]["p50_us"] for r in rounds),
            "p99_us": stats.median(r[name]["p99_us"] for r in rounds),
            "errors": sum(r[name]["errors"] for r in rounds),
            "sim_cpu_us_per_request": stats.median(r[name]["sim_cpu_us_per_request"] for r in rounds),
            "server_cpu_us_per_request": stats.median(r[name]["server_cpu_us_per_request"] for r in rounds),
            "sim_switches_per_request": stats.median(
                r[name]["sim_switches_per_request"]["involuntary"] + r[name]["sim_switches_per_request"]["voluntary"]
                for r in rounds),
            "server_preemptions_per_request": stats.median(
                r[name]["server_switches_per_request"]["involuntary"] for r in rounds) if name != "direct" else None,
        }
        if name != "direct":
            out[name]["rps_ratio_to_direct"] = stats.paired_ratio(rounds, name, "direct", "rps")
            out[name]["p50_ratio_to_direct"] = stats.paired_ratio(rounds, name, "direct", "p50_us")
            out[name]["p99_ratio_to_direct"] = stats.paired_ratio(rounds, name, "direct", "p99_us")
            out[name]["added_p50_us"] = stats.paired_difference(rounds, name, "direct", "p50_us")
    out["proxy_vs_nginx"] = {
        "rps_ratio": stats.paired_ratio(rounds, "proxy", "nginx", "rps"),
        "p50_ratio": stats.paired_ratio(rounds, "proxy", "nginx", "p50_us"),
        "p99_ratio": stats.paired_ratio(rounds, "proxy", "nginx", "p99_us"),
        "cpu_per_request_ratio": stats.paired_ratio(rounds, "proxy", "nginx", "server_cpu_us_per_request"),
    }
    out["bare_vs_nginx"] = {
        "rps_ratio": stats.paired_ratio(rounds, "bare", "nginx", "rps"),
        "cpu_per_request_ratio": stats.paired_ratio(rounds, "bare", "nginx", "server_cpu_us_per_request"),
    }
    out["proxy_vs_bare"] = {
        "rps_ratio": stats.paired_ratio(rounds, "proxy", "bare", "rps"),
        "cpu_per_request_ratio": stats.paired_ratio(rounds, "proxy", "bare", "server_cpu_us_per_request"),
    }
    return out
