"""5. Decisions, the product's point: the seeded workload bench/workloads/mixed.json (8
clients, each sending its own requests one at a time) on forge-sim's realistic timing model,
scaled down by --time-scale, four ways, for one backend (12 GiB) and three (24, 24, 12 GiB):
  a  clients straight to Forge, never touching memory settings
  b  clients straight to Forge, each POSTing forge_inference_memory by the seed article's
     recipe (Flux 4096, everything else 10240) before every request, racing each other
  c  through the proxy, first come first served (max_bypass = 0)
  d  through the proxy with its defaults (affinity scheduling, max_bypass = 4)
For a/b with three backends, client k uses Forge k % 3. c and d both route with "affinity"
(the default) and differ only in max_bypass. Every way starts on fresh forge-sims (nothing
loaded, Forge's default settings) and, for c/d, a fresh proxy.

All times are SIMULATED seconds: the journal's duration_ms is unscaled, wall times are
divided by the time scale. Definitions:
  queue wait     journal started_ms (the generation took Forge's lock) minus the moment the
                 client sent the generation request, on one clock (each forge-sim's clock is
                 calibrated against the harness's with a journaled options call)
  wrong setting  a generation whose forge_inference_memory differs by min_change_mib (256) or
                 more from what the proxy's policy requires for its family, card and size
                 (asked of the proxy: POST /proxy/plan/txt2img on a 12 and a 24 GiB forge-sim)
  makespan       first request sent to last answer received
  reloads        generations with reloaded = true, of which file loads (load = "disk": the
                 checkpoint read again) and RAM moves (load = "ram": every model moved off the
                 card and back after a memory change, as Forge's need_global_unload does);
                 slowdowns: slowdown > 1 (weights swapped)
  failures       OOM outcomes in the journal; client failures: any answer but 200.
The proxy's own time constants are wall-clock and do not scale with --time-scale: its
scheduler's initial estimates (a generation 10 s, a reload 20 s, until learned) and max_wait
(2 min) are huge next to scaled generations (tens of milliseconds); see bench/README.md."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from benchlib import policy, servers, stats
from benchlib.httpc import Conn, delete, get_json, post_json

WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "mixed.json"
WAYS = {
    "a": "direct, memory never touched",
    "b": "direct, article recipe before every request",
    "c": "proxy, FIFO (max_bypass = 0)",
    "d": "proxy, affinity (defaults)",
}
SETUPS = {"1 backend": [12288], "3 backends": [24576, 24576, 12288]}
CARDS = sorted({c for cards in SETUPS.values() for c in cards})
WALL_TIMEOUT = 600.0  # seconds; no way may run longer than this


def run(ctx) -> dict:
    workload = json.loads(WORKLOAD.read_text())
    requests = workload["requests"][: ctx.settings.decision_requests]
    scale = ctx.settings.decision_time_scale
    required, policy_check = required_values(ctx, requests)
    runs = {setup: {way: [] for way in WAYS} for setup in SETUPS}
    for rep in range(ctx.settings.decision_repeats):
        for setup, cards in SETUPS.items():
            for way in stats.rotate(list(WAYS), rep):
                result = run_way(ctx, way, cards, requests, required, scale, f"r{rep}{way}")
                runs[setup][way].append(result)
                m = result["metrics"]
                ctx.log(f"decisions {setup} {way} rep{rep+1}: wall {result['wall_s']:.1f}s, gpu {m['gpu_time_s']:.0f}s, "
                        f"makespan {m['makespan_s']:.0f}s, reloads {m['reloads']}, oom {m['oom']}, "
                        f"wrong {m['wrong_settings']}, slow {m['slowdowns']}, qw p99 {m['queue_wait_p99_s']:.0f}s")
    summary = {setup: {way: median_metrics([r["metrics"] for r in runs[setup][way]]) for way in WAYS}
               for setup in SETUPS}
    return {
        "workload": {"file": "bench/workloads/mixed.json", "seed": workload["seed"], "requests": len(requests),
                     "clients": workload["clients"],
                     "families": {f: sum(1 for r in requests if r["family"] == f) for f in policy.PROFILES}},
        "ways": WAYS,
        "setups": {k: [f"{c // 1024} GiB" for c in v] for k, v in SETUPS.items()},
        "time_scale": scale,
        "repeats": ctx.settings.decision_repeats,
        "policy_check": policy_check,
        "wrong_setting_threshold_mib": policy.MIN_CHANGE_MIB,
        "runs": runs,
        "summary": summary,
    }


def required_values(ctx, requests: list[dict]) -> tuple[dict, dict]:
    """{request id: {card MiB: forge_inference_memory}} from the proxy's own plan endpoint,
    on a fresh forge-sim of each card size; checked against benchlib/policy.py."""
    required: dict[int, dict[int, int]] = {r["id"]: {} for r in requests}
    agree = disagree = 0
    examples = []
    for card in CARDS:
        sim = servers.start_sim(ctx.procs, ctx.server_cpus, vram_mib=card, name=f"sim-plan-{card}")
        proxy = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim.url], name=f"proxy-plan-{card}")
        try:
            for r in requests:
                status, _, data = post_json(proxy.url, "/proxy/plan/txt2img", r["body"])
                if status != 200:
                    raise RuntimeError(f"/proxy/plan answered {status}: {data[:300]!r}")
                plan = json.loads(data)["plan"]
                value = plan["computed"]["inference_mib"]
                if plan["profile"] != r["family"]:
                    raise RuntimeError(f"the proxy took request {r['id']} for {plan['profile']}, not {r['family']}")
                required[r["id"]][card] = value
                mine = policy.inference_mib(r["family"], card, r["body"])
                if mine == value:
                    agree += 1
                else:
                    disagree += 1
                    examples.append({"id": r["id"], "card": card, "proxy": value, "bench/benchlib/policy.py": mine})
        finally:
            ctx.procs.stop(proxy.proc)
            ctx.procs.stop(sim.proc)
    check = {"source": "POST /proxy/plan/txt2img", "agree_with_python_policy": agree,
             "disagree": disagree, "examples": examples[:5]}
    ctx.log(f"decisions: required values from the proxy's plan endpoint; python policy agrees {agree}/{agree + disagree}")
    return required, check


def calibrate(sim_url: str) -> float:
    """Seconds to add to a forge-sim journal time (ms since it started) to get
    time.monotonic(): a journaled options call (Forge's default inference memory, so nothing
    changes) is stamped between our send and its answer."""
    t0 = time.monotonic()
    status, _, _ = post_json(sim_url, "/sdapi/v1/options", {"forge_inference_memory": 1024})
    t1 = time.monotonic()
    if status != 200:
        raise RuntimeError(f"calibration options call answered {status}")
    entry = [e for e in get_json(sim_url, "/sim/journal") if e.get("kind") == "options"][-1]
    delete(sim_url, "/sim/journal")
    return (t0 + t1) / 2 - entry["at_ms"] / 1000


def run_way(ctx, way: str, cards: list[int], requests: list[dict], required: dict, scale: float, tag: str) -> dict:
    sims, proxy = [], None
    try:
        for i, card in enumerate(cards):
            sims.append(servers.start_sim(ctx.procs, ctx.server_cpus, vram_mib=card, time_scale=scale,
                                          image_bytes=2000, name=f"sim-{way}-{i}"))
        offsets = [calibrate(s.url) for s in sims]
        if way in ("c", "d"):
            proxy = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [s.url for s in sims],
                                        name=f"proxy-{way}", max_bypass=0 if way == "c" else None)
        records = drive(way, sims, proxy, requests, tag, ctx.settings.decision_clients)
        journals = [get_json(s.url, "/sim/journal") for s in sims]
        status = get_json(proxy.url, "/proxy/status") if proxy else None
    finally:
        if proxy:
            ctx.procs.stop(proxy.proc)
        for s in sims:
            ctx.procs.stop(s.proc)
    metrics = measure(records, journals, offsets, cards, required, scale, tag)
    wall = max(r["t_done"] for r in records) - min(r["t_send"] for r in records)
    out = {"wall_s": wall, "metrics": metrics, "requests": records, "clock_offsets_s": offsets,
           "journal_generations": [[compact(e) for e in j if e.get("kind") == "generation"] for j in journals]}
    if status:
        out["proxy_scheduler"] = status.get("scheduler")
    return out


def drive(way: str, sims, proxy, requests: list[dict], tag: str, clients: int) -> list[dict]:
    """Runs the workload: one thread per client, each sending its own requests in order."""
    by_client: dict[int, list[dict]] = {}
    for r in requests:
        by_client.setdefault(r["client"], []).append(r)
    records: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + WALL_TIMEOUT
    errors: list[BaseException] = []

    def client(k: int) -> None:
        target = proxy.url if proxy else sims[k % len(sims)].url
        try:
            with Conn(target, timeout=WALL_TIMEOUT) as conn:
                for r in by_client.get(k, []):
                    if time.monotonic() > deadline:
                        return
                    if way == "b":
                        memory = policy.article_recipe(r["family"])
                        st, _, _, _ = conn.request("POST", "/sdapi/v1/options",
                                                   json.dumps({"forge_inference_memory": memory}).encode())
                    body = dict(r["body"], force_task_id=f"bench-{tag}-{r['id']}")
                    t_send = time.monotonic()
                    st, headers, data, _ = conn.request("POST", "/sdapi/v1/txt2img", json.dumps(body).encode())
                    t_done = time.monotonic()
                    rec = {"id": r["id"], "client": k, "family": r["family"], "status": st,
                           "t_send": t_send, "t_done": t_done,
                           "proxy": {h: v for h, v in headers.items() if h.startswith("x-forge-proxy-")} or None}
                    if st != 200:
                        rec["error"] = data[:300].decode(errors="replace")
                    with lock:
                        records.append(rec)
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WALL_TIMEOUT + 30)
    if errors:
        raise RuntimeError(f"decision client failed: {errors[0]!r}")
    if len(records) != len(requests):
        raise RuntimeError(f"only {len(records)} of {len(requests)} requests were answered within {WALL_TIMEOUT}s")
    return records


def compact(entry: dict) -> dict:
    keys = ("task_id", "family", "checkpoint", "forge_inference_memory", "gpu_weights_loaded_mib", "reloaded", "load",
            "duration_ms", "outcome", "low_vram", "slowdown", "started_ms", "ended_ms", "width", "height",
            "batch_size", "enable_hr", "steps")
    return {k: entry.get(k) for k in keys}


def measure(records, journals, offsets, cards, required, scale: float, tag: str) -> dict:
    sent = {f"bench-{tag}-{r['id']}": r for r in records}
    gens = []  # (record, entry, card, offset)
    per_backend = []
    for journal, offset, card in zip(journals, offsets, cards):
        mine = [e for e in journal if e.get("kind") == "generation" and e.get("task_id") in sent]
        per_backend.append({f"{card // 1024} GiB": {f: sum(1 for e in mine if e["family"] == f) for f in policy.PROFILES}})
        gens += [(sent[e["task_id"]], e, card, offset) for e in mine]
    waits = [((e["started_ms"] / 1000 + off) - rec["t_send"]) / scale for rec, e, _, off in gens]
    # Wall milliseconds from the generation's end in Forge to the client having the whole
    # answer: the path back (a proxy's, or none), not scaled.
    delivery = [(rec["t_done"] - (e["ended_ms"] / 1000 + off)) * 1000 for rec, e, _, off in gens]
    wrong = [rec["id"] for rec, e, card, _ in gens
             if abs(e["forge_inference_memory"] - required[rec["id"]][card]) >= policy.MIN_CHANGE_MIB]
    first = min(r["t_send"] for r in records)
    last = max(r["t_done"] for r in records)
    return {
        "generations": len(gens),
        "ok": sum(1 for _, e, _, _ in gens if e.get("outcome") == "ok"),
        "gpu_time_s": sum(e["duration_ms"] for _, e, _, _ in gens) / 1000,
        "makespan_s": (last - first) / scale,
        "reloads": sum(1 for _, e, _, _ in gens if e.get("reloaded")),
        "file_loads": sum(1 for _, e, _, _ in gens if e.get("load") == "disk"),
        "ram_moves": sum(1 for _, e, _, _ in gens if e.get("load") == "ram"),
        "slowdowns": sum(1 for _, e, _, _ in gens if (e.get("slowdown") or 1) > 1.0001),
        "low_vram": sum(1 for _, e, _, _ in gens if e.get("low_vram")),
        "oom": sum(1 for _, e, _, _ in gens if e.get("outcome") == "oom"),
        "client_failures": sum(1 for r in records if r["status"] != 200),
        "client_500": sum(1 for r in records if r["status"] == 500),
        "wrong_settings": len(wrong),
        "queue_wait_p50_s": stats.percentile(waits, 50),
        "queue_wait_p99_s": stats.percentile(waits, 99),
        "queue_wait_max_s": max(waits) if waits else None,
        "answer_delivery_wall_ms_p50": stats.percentile(delivery, 50),
        "answer_delivery_wall_ms_p99": stats.percentile(delivery, 99),
        "per_backend_generations": per_backend,
        "by_family_gpu_time_s": {f: sum(e["duration_ms"] for _, e, _, _ in gens if e["family"] == f) / 1000
                                 for f in policy.PROFILES},
    }


def median_metrics(runs: list[dict]) -> dict:
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = stats.median(r[key] for r in runs)
        else:
            out[key] = value
    return out
