"""The targets of issue 5 ("Where the proxy must stand"), with issue 14's tighter memory
target for idle connections, each checked against the measured medians: met (True), missed
(False) or not measured (None), with the measured ratio."""

from __future__ import annotations

ISSUE = {
    "small": "Small requests: added p50 latency no more than nginx's, throughput at least nginx's at 16 and 256 connections.",
    "big": "Big bodies: pass-through within 1.1x of nginx; the intercepted 32 MiB img2img within 1.5x of direct; "
           "peak memory for one 32 MiB intercepted request under 3x its size plus 32 MiB; pass-through memory flat.",
    "nothing": "Intercepted with nothing to change: under 1 ms added at p50 with verification off, one backend round trip with it on.",
    "idle": "2 000 idle connections plus load: under 32 MiB resident (issue 14; issue 5 asked for 64 MiB).",
    "decisions": "Decisions: (d) at least 2x fewer reloads than (b), zero out-of-memory failures and zero wrong settings "
                 "where (a) has them, p99 queue wait no worse than 1.5x FIFO's.",
}
FLAT_GROWTH_MIB = 8.0  # "flat": the peak grows by less than a quarter of one 32 MiB body
ROUND_TRIP_FACTOR = 1.5  # "one backend round trip": at most 1.5x a direct GET /sdapi/v1/options
IDLE_LIMIT_MIB = 32  # issue 14


def _t(scenario, name, met, ratio, measured, limit, note=""):
    return {"scenario": scenario, "target": name, "met": met, "ratio": ratio, "measured": measured,
            "limit": limit, "note": note, "issue": ISSUE[scenario]}


def evaluate(results: dict) -> list[dict]:
    s = results.get("scenarios", {})
    out = []
    if "small" in s:
        out += _small(s["small"])
    if "big" in s:
        out += _big(s["big"])
    if "nothing" in s:
        out += _nothing(s["nothing"])
    if "idle" in s:
        out += _idle(s["idle"])
    if "decisions" in s:
        out += _decisions(s["decisions"])
    return out


def _small(r):
    out = []
    for key, cell in r["cells"].items():
        sm = cell["summary"]
        p, n = sm["proxy"]["added_p50_us"], sm["nginx"]["added_p50_us"]
        ratio = p / n if n and n > 0 else None
        out.append(_t("small", f"added p50 <= nginx's: {key}", p <= n, ratio,
                      f"proxy +{p:.0f} us, nginx +{n:.0f} us over direct", "proxy added p50 <= nginx added p50"))
    for key, cell in r["cells"].items():
        if cell["connections"] in (16, 256):
            ratio = cell["summary"]["proxy_vs_nginx"]["rps_ratio"]
            sm = cell["summary"]
            out.append(_t("small", f"throughput >= nginx's: {key}", ratio >= 1.0, ratio,
                          f"proxy {sm['proxy']['rps']:.0f}/s, nginx {sm['nginx']['rps']:.0f}/s "
                          f"(bare hyper {sm['bare']['rps']:.0f}/s, {sm['bare_vs_nginx']['rps_ratio']:.2f}x nginx)",
                          "proxy/nginx >= 1.0"))
    return out


def _big(r):
    out = []
    pt = r["pass_through"]["summary"]["proxy"]["ratio_to_nginx"]
    out.append(_t("big", "32 MiB pass-through response within 1.1x of nginx", pt <= 1.1, pt,
                  f"proxy {r['pass_through']['summary']['proxy']['median_ms']:.1f} ms, nginx "
                  f"{r['pass_through']['summary']['nginx']['median_ms']:.1f} ms", "<= 1.1"))
    ii = r["img2img"]["summary"]["proxy"]["ratio_to_direct"]
    out.append(_t("big", "32 MiB img2img (intercepted) within 1.5x of direct", ii <= 1.5, ii,
                  f"proxy {r['img2img']['summary']['proxy']['median_ms']:.1f} ms, direct "
                  f"{r['img2img']['summary']['direct']['median_ms']:.1f} ms", "<= 1.5"))
    mem = r["img2img"]["memory"]
    limit = 3 * 32 + 32
    peak = mem["after_one_request_hwm_mib"]
    out.append(_t("big", "peak memory, one 32 MiB img2img, under 3x32+32 = 128 MiB", peak < limit, peak / limit,
                  f"VmHWM {peak:.1f} MiB (idle {mem['idle_hwm_mib']:.1f} MiB)", f"< {limit} MiB"))
    pm = r["pass_through"]["memory"]
    g = pm["growth_mib"]
    out.append(_t("big", "pass-through memory flat", g < FLAT_GROWTH_MIB, g / FLAT_GROWTH_MIB,
                  f"VmHWM {pm['idle_hwm_mib']:.1f} -> {pm['after_256mib_response_hwm_mib']:.1f} MiB after {pm['responses']}",
                  f"growth < {FLAT_GROWTH_MIB:.0f} MiB"))
    return out


def _nothing(r):
    sm = r["summary"]
    off = sm["proxy-verify-off"]["added_p50_us"]
    extra = sm["verify_on_minus_off_p50_us"]
    rtt = sm["rtt-options"]["p50_us"]
    return [
        _t("nothing", "verification off: < 1 ms added at p50 (over direct)", off < 1000, off / 1000,
           f"+{off:.0f} us (over the proxy's own pass-through: +{sm['proxy-verify-off']['added_p50_over_proxy_pass_us']:.0f} us)",
           "< 1000 us"),
        _t("nothing", "verification on: about one backend round trip more than off", extra <= ROUND_TRIP_FACTOR * rtt,
           extra / rtt if rtt else None,
           f"on - off = {extra:.0f} us; one round trip (GET /sdapi/v1/options direct, p50) = {rtt:.0f} us",
           f"<= {ROUND_TRIP_FACTOR}x one round trip"),
    ]


def _idle(r):
    sm = r["summary"]["with"]
    rss = sm["max_rss_mib_any_round"]
    return [_t("idle", f"{r['idle_connections']} idle connections + load: < {IDLE_LIMIT_MIB} MiB resident", rss < IDLE_LIMIT_MIB,
               rss / IDLE_LIMIT_MIB,
               f"max VmRSS {rss:.1f} MiB (without idle connections: {r['summary']['without']['max_rss_mib_any_round']:.1f} MiB); "
               f"p99 {sm['p99_us']:.0f} us vs {r['summary']['without']['p99_us']:.0f} us without", f"< {IDLE_LIMIT_MIB} MiB")]


def _decisions(r):
    out = []
    for setup, ways in r["summary"].items():
        a, b, c, d = (ways[w] for w in "abcd")
        # No reloads in (d): met if (b) had some (no finite ratio); nothing to compare if neither had.
        ratio = b["reloads"] / d["reloads"] if d["reloads"] else None
        met = ratio >= 2 if ratio is not None else (True if b["reloads"] else None)
        out.append(_t("decisions", f"{setup}: (d) >= 2x fewer reloads than (b)", met, ratio,
                      f"(b) {b['reloads']:.0f}, (d) {d['reloads']:.0f} reloads", ">= 2"))
        a_fail = a["oom"] + a["client_failures"]
        d_fail = d["oom"] + d["client_failures"]
        out.append(_t("decisions", f"{setup}: zero OOM failures in (d) where (a) has them",
                      (d_fail == 0) if a_fail else None, None,
                      f"(a) {a['oom']:.0f} OOM / {a['client_failures']:.0f} failed requests; (d) {d['oom']:.0f} / {d['client_failures']:.0f}",
                      "0", "" if a_fail else "(a) had none: not applicable"))
        out.append(_t("decisions", f"{setup}: zero wrong settings in (d) where (a) has them",
                      (d["wrong_settings"] == 0) if a["wrong_settings"] else None, None,
                      f"(a) {a['wrong_settings']:.0f}, (b) {b['wrong_settings']:.0f}, (c) {c['wrong_settings']:.0f}, "
                      f"(d) {d['wrong_settings']:.0f}", "0", "" if a["wrong_settings"] else "(a) had none: not applicable"))
        # FIFO never waited: (d) meets it only by never waiting either.
        q = d["queue_wait_p99_s"] / c["queue_wait_p99_s"] if c["queue_wait_p99_s"] else None
        met = q <= 1.5 if q is not None else d["queue_wait_p99_s"] == 0
        out.append(_t("decisions", f"{setup}: p99 queue wait of (d) <= 1.5x FIFO (c)", met, q,
                      f"(d) {d['queue_wait_p99_s']:.0f} s, (c) {c['queue_wait_p99_s']:.0f} s (simulated)", "<= 1.5"))
    return out
