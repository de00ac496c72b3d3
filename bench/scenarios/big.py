"""2. Big bodies.
(a) img2img with 4 init images totalling 32 MiB of base64 PNG (an intercepted route: the
    proxy reads and parses the body before forwarding it);
(b) a 32 MiB pass-through response, forge-sim's GET /sim/bytes?n=33554432.
Time per request for direct, nginx and the proxy, alternating within each round; and the
proxy's resident memory (VmHWM, plus VmRSS sampled every 10 ms) in a fresh proxy process, so
that its peak is the measured requests' own."""

from __future__ import annotations

import json

from benchlib import images, procstat, servers, stats
from benchlib.httpc import Conn

MIB = 1024 * 1024
BODY_MIB = 32
CONTENDERS = ["direct", "nginx", "proxy"]
PASS_PATH = f"/sim/bytes?n={BODY_MIB * MIB}"
BIG_PASS_PATH = f"/sim/bytes?n={256 * MIB}"


def img2img_body() -> bytes:
    body = {
        "prompt": "bench: 4 init images, 32 MiB of base64 PNG",
        "init_images": images.init_images(BODY_MIB * MIB, count=4),
        "denoising_strength": 0.5,
        "steps": 2,
        "width": 512,
        "height": 512,
    }
    return json.dumps(body).encode()


def run(ctx) -> dict:
    base = ctx.base()
    urls = {"direct": base["sim"].url, "nginx": base["nginx"].url, "proxy": base["proxy"].url}
    body = img2img_body()
    # forge-sim decodes every init image (base64, PNG signature): check it accepts them.
    with Conn(urls["direct"]) as c:
        status, _, data, _ = c.request("POST", "/sdapi/v1/img2img", body)
    if status != 200:
        raise RuntimeError(f"forge-sim refused the img2img body: {status} {data[:300]!r}")
    checks = {"img2img_body_bytes": len(body), "init_images_base64_bytes": BODY_MIB * MIB,
              "forge_sim_accepted_init_images": True}
    out = {"checks": checks}
    out["img2img"] = timed(ctx, urls, "POST", "/sdapi/v1/img2img", body)
    out["img2img"]["memory"] = proxy_memory_img2img(ctx, base["sim"].url, body)
    out["pass_through"] = timed(ctx, urls, "GET", PASS_PATH, None)
    out["pass_through"]["memory"] = proxy_memory_pass_through(ctx, base["sim"].url)
    return out


def timed(ctx, urls: dict, method: str, path: str, body: bytes | None) -> dict:
    n = ctx.settings.big_requests
    rounds = []
    for name in urls:  # warm-up, unmeasured
        with Conn(urls[name]) as c:
            check(c.request(method, path, body, keep=False), name, path)
    for r in range(ctx.settings.rounds):
        result = {}
        for name in stats.rotate(CONTENDERS, r):
            times = []
            with Conn(urls[name]) as c:
                for _ in range(n):
                    res = check(c.request(method, path, body, keep=False), name, path)
                    times.append(res[3])
            result[name] = {"seconds": times, "median_s": stats.median(times)}
        rounds.append(result)
        ctx.log(f"big {path[:22]} r{r+1}: " + ", ".join(f"{k} {result[k]['median_s']*1000:.1f} ms" for k in CONTENDERS))
    summary = {name: {"median_ms": 1000 * stats.median(r[name]["median_s"] for r in rounds)} for name in CONTENDERS}
    for name in ("nginx", "proxy"):
        summary[name]["ratio_to_direct"] = stats.paired_ratio(rounds, name, "direct", "median_s")
    summary["proxy"]["ratio_to_nginx"] = stats.paired_ratio(rounds, "proxy", "nginx", "median_s")
    return {"requests_per_round": n, "rounds": rounds, "summary": summary}


def check(result, name: str, path: str):
    status = result[0]
    if status != 200:
        raise RuntimeError(f"{name} {path}: status {status} {result[2]!r:.300}")
    return result


def proxy_memory_img2img(ctx, sim_url: str, body: bytes) -> dict:
    """A fresh proxy: its peak after ONE 32 MiB img2img, then after four more."""
    proxy = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim_url], name="proxy-mem-img2img")
    try:
        with Conn(proxy.url) as c:
            c.request("GET", "/sdapi/v1/options", keep=False)
            idle = procstat.status(proxy.pid)
            with procstat.Sampler(proxy.pid) as s:
                check(c.request("POST", "/sdapi/v1/img2img", body, keep=False), "proxy", "img2img")
            one = procstat.status(proxy.pid)
            for _ in range(4):
                check(c.request("POST", "/sdapi/v1/img2img", body, keep=False), "proxy", "img2img")
            five = procstat.status(proxy.pid)
    finally:
        ctx.procs.stop(proxy.proc)
    result = {
        "idle_hwm_mib": idle["hwm_mib"],
        "after_one_request_hwm_mib": one["hwm_mib"],
        "sampled_max_rss_mib_during_one": s.max_rss_mib,
        "after_five_requests_hwm_mib": five["hwm_mib"],
        "peak_over_idle_mib": one["hwm_mib"] - idle["hwm_mib"],
        "request_body_mib": len(body) / MIB,
    }
    ctx.log(f"big img2img memory: {result}")
    return result


def proxy_memory_pass_through(ctx, sim_url: str) -> dict:
    """A fresh proxy: peak before and after several 32 MiB downloads and one of 256 MiB."""
    proxy = servers.start_proxy(ctx.procs, ctx.server_cpus, ctx.workdir, [sim_url], name="proxy-mem-pass")
    try:
        with Conn(proxy.url) as c:
            c.request("GET", "/sdapi/v1/options", keep=False)
            idle = procstat.status(proxy.pid)
            with procstat.Sampler(proxy.pid) as s:
                for _ in range(ctx.settings.big_requests):
                    check(c.request("GET", PASS_PATH, keep=False), "proxy", PASS_PATH)
                after_32 = procstat.status(proxy.pid)
                check(c.request("GET", BIG_PASS_PATH, keep=False), "proxy", BIG_PASS_PATH)
            after_256 = procstat.status(proxy.pid)
    finally:
        ctx.procs.stop(proxy.proc)
    result = {
        "idle_hwm_mib": idle["hwm_mib"],
        "after_32mib_responses_hwm_mib": after_32["hwm_mib"],
        "after_256mib_response_hwm_mib": after_256["hwm_mib"],
        "sampled_max_rss_mib": s.max_rss_mib,
        "growth_mib": after_256["hwm_mib"] - idle["hwm_mib"],
        "responses": f"{ctx.settings.big_requests} x 32 MiB, then 1 x 256 MiB",
    }
    ctx.log(f"big pass-through memory: {result}")
    return result
