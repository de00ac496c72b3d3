"""3. Intercepted, nothing to change: a small txt2img whose memory the proxy has already
applied (one was sent first), on forge-sim with --time-scale 0 and small images, so the
generation costs almost nothing and the proxy's own work shows. wrk, one connection, fixed
duration; contenders alternate in each round:
  direct           forge-sim itself (the baseline)
  nginx            plain reverse proxy
  proxy-pass       forge-vram-proxy with txt2img NOT configured as a generation route:
                   the proxy's own plain pass-through of the same request
  proxy-verify-off verify_before_generation = false (trusts its cache of Forge's options)
  proxy-verify-on  verify_before_generation = true (re-reads Forge's options first)
Two references from the same rounds: one backend round trip, GET /sdapi/v1/options and
GET /sdapi/v1/memory direct to forge-sim at one connection (the calls the proxy makes)."""

from __future__ import annotations

import json

from benchlib import servers, stats, wrk
from benchlib.httpc import delete, get_json, post_json

BODY = {"prompt": "a lighthouse", "steps": 1, "width": 512, "height": 512}
CONTENDERS = ["direct", "nginx", "proxy-pass", "proxy-verify-off", "proxy-verify-on"]
REFERENCES = {"rtt-options": "/sdapi/v1/options", "rtt-memory": "/sdapi/v1/memory"}


def run(ctx) -> dict:
    base = ctx.base()
    sim = base["sim"].url
    body_file = ctx.workdir / "txt2img-small.json"
    body_file.write_text(json.dumps(BODY))
    started = []
    try:
        p_pass = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim], name="proxy-pass",
                                     generation_routes=["/sdapi/v1/img2img"])
        p_off = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim], name="proxy-verify-off", verify=False)
        p_on = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim], name="proxy-verify-on", verify=True)
        started = [p_pass, p_off, p_on]
        urls = {"direct": sim, "nginx": base["nginx"].url, "proxy-pass": p_pass.url,
                "proxy-verify-off": p_off.url, "proxy-verify-on": p_on.url}
        checks = warm_and_check(urls)
        rounds = []
        seconds = ctx.settings.nothing_seconds
        for r in range(ctx.settings.rounds):
            delete(sim, "/sim/journal")
            result = {}
            for name in stats.rotate(CONTENDERS, r):
                result[name] = wrk.run(urls[name] + "/sdapi/v1/txt2img", 1, seconds, ctx.client_cpus,
                                       method="POST", body_file=body_file)
            for name, path in REFERENCES.items():
                result[name] = wrk.run(sim + path, 1, seconds, ctx.client_cpus)
            journal = get_json(sim, "/sim/journal")
            result["journal"] = {
                "generations": sum(1 for e in journal if e.get("kind") == "generation"),
                "options_changes": sum(1 for e in journal if e.get("kind") == "options"),
                "reloads": sum(1 for e in journal if e.get("reloaded")),
            }
            rounds.append(result)
            ctx.log(f"nothing r{r+1}: " + ", ".join(f"{n} p50 {result[n]['p50_us']}us" for n in CONTENDERS + list(REFERENCES))
                    + f"; journal {result['journal']}")
    finally:
        for p in started:
            ctx.procs.stop(p.proc)
        delete(sim, "/sim/journal")
    return {"body": BODY, "seconds_per_run": seconds, "checks": checks, "rounds": rounds, "summary": summarize(rounds)}


def warm_and_check(urls: dict) -> dict:
    """One txt2img through each so the proxies have applied the memory; then a second one
    must need no options call (x-forge-proxy-options-applied: false)."""
    checks = {}
    for name, url in urls.items():
        status, _, _ = post_json(url, "/sdapi/v1/txt2img", BODY)
        if status != 200:
            raise RuntimeError(f"{name}: txt2img warm-up answered {status}")
    for name in ("proxy-verify-off", "proxy-verify-on"):
        status, headers, _ = post_json(urls[name], "/sdapi/v1/txt2img", BODY)
        checks[name] = {k: v for k, v in headers.items() if k.startswith("x-forge-proxy-")}
        if headers.get("x-forge-proxy-options-applied") != "false":
            raise RuntimeError(f"{name}: the second txt2img still changed options: {checks[name]}")
    return checks


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for name in CONTENDERS + list(REFERENCES):
        out[name] = {
            "p50_us": stats.median(r[name]["p50_us"] for r in rounds),
            "p99_us": stats.median(r[name]["p99_us"] for r in rounds),
            "rps": stats.median(r[name]["rps"] for r in rounds),
            "errors": sum(r[name]["errors"] for r in rounds),
        }
        if name in CONTENDERS and name != "direct":
            out[name]["added_p50_us"] = stats.paired_difference(rounds, name, "direct", "p50_us")
            out[name]["p50_ratio_to_direct"] = stats.paired_ratio(rounds, name, "direct", "p50_us")
            out[name]["added_p50_over_proxy_pass_us"] = stats.paired_difference(rounds, name, "proxy-pass", "p50_us")
    out["verify_on_minus_off_p50_us"] = stats.paired_difference(rounds, "proxy-verify-on", "proxy-verify-off", "p50_us")
    out["options_changes_during_measurement"] = sum(r["journal"]["options_changes"] for r in rounds)
    out["reloads_during_measurement"] = sum(r["journal"]["reloads"] for r in rounds)
    return out
