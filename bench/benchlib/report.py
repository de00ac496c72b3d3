"""latest.md: the Markdown tables of a run, from its results dictionary."""

from __future__ import annotations


def _f(v, fmt="{:.0f}", none="–"):
    return none if v is None else fmt.format(v)


def _x(v):
    return _f(v, "{:.2f}x")


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _met(m):
    return {True: "**met**", False: "**missed**", None: "n/a"}[m]


def header(results: dict) -> str:
    m, t, p = results["machine"], results["tools"], results["pinning"]
    source = t.get("binaries_source", "this working tree")
    if source == "this working tree":
        source = f"commit {t['git_commit'][:10]}" + (" with uncommitted changes" if t.get("git_worktree_dirty") else "")
    return (
        f"Run: `{results['command']}` ({results['mode']}), {results['started_at']}, {results['duration_s']} s.  \n"
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}, virtual machine: {m['hypervisor']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, {m['os']}; shared and noisy: ratios are the result, absolute figures context.  \n"
        f"Pinning: {p['description']}.  \n"
        f"Tools: {t['forge-vram-proxy']} and {t['forge-sim']} (release build of {source}), "
        f"{t['nginx']} (`{ (t.get('nginx_debian_package') or {}).get('nginx-light') or 'nginx'}`), {t['wrk']}, "
        f"Python {t['python']}, {t['rustc']}.  \n"
        f"Rounds: contenders alternate within each round, {results['settings']['rounds']} rounds; "
        f"medians over rounds; ratios are medians of per-round ratios.\n"
    )


def small(r: dict) -> str:
    rows, cpu_rows = [], []
    for key, cell in r["cells"].items():
        s = cell["summary"]
        name = f"`{cell['endpoint'].rsplit('/', 1)[1]}`"
        rows.append([
            name, cell["connections"],
            f"{s['direct']['rps']:.0f}", f"{s['nginx']['rps']:.0f} ({_x(s['nginx']['rps_ratio_to_direct'])})",
            f"{s['proxy']['rps']:.0f} ({_x(s['proxy']['rps_ratio_to_direct'])})",
            f"{s['direct']['p50_us']:.0f} / {s['direct']['p99_us']:.0f}",
            f"{s['nginx']['p50_us']:.0f} / {s['nginx']['p99_us']:.0f}",
            f"{s['proxy']['p50_us']:.0f} / {s['proxy']['p99_us']:.0f}",
            f"+{s['nginx']['added_p50_us']:.0f}", f"+{s['proxy']['added_p50_us']:.0f}",
            _x(s["proxy_vs_nginx"]["rps_ratio"]),
            f"{s['bare']['rps']:.0f} ({_x(s['bare_vs_nginx']['rps_ratio'])})",
        ])
        cpu_rows.append([
            name, cell["connections"], f"{s['direct']['sim_cpu_us_per_request']:.1f}",
            f"{s['nginx']['server_cpu_us_per_request']:.1f} + sim {s['nginx']['sim_cpu_us_per_request']:.1f}",
            f"{s['proxy']['server_cpu_us_per_request']:.1f} + sim {s['proxy']['sim_cpu_us_per_request']:.1f}",
            _x(s["proxy_vs_nginx"]["cpu_per_request_ratio"]),
            f"{s['nginx']['server_preemptions_per_request']:.2f} / {s['nginx']['sim_switches_per_request']:.2f}",
            f"{s['proxy']['server_preemptions_per_request']:.2f} / {s['proxy']['sim_switches_per_request']:.2f}",
            f"{s['bare']['server_cpu_us_per_request']:.1f} ({_x(s['bare_vs_nginx']['cpu_per_request_ratio'])})",
            _x(s["proxy_vs_bare"]["cpu_per_request_ratio"]),
        ])
    return (f"### 1. Small requests (wrk, {r['seconds_per_run']} s per run)\n\n"
            + _table(["GET", "conns", "direct req/s", "nginx req/s (x direct)", "proxy req/s (x direct)",
                      "direct p50/p99 µs", "nginx p50/p99 µs", "proxy p50/p99 µs", "nginx added p50 µs",
                      "proxy added p50 µs", "proxy/nginx req/s", "reference: bare hyper req/s (x nginx)"], rows)
            + "\nCPU time per request on the server CPU (from /proc: utime + stime of each process group), and "
              "context switches per request (the contender preempted / forge-sim switched):\n\n"
            + _table(["GET", "conns", "direct: forge-sim µs", "nginx µs", "proxy µs", "proxy/nginx CPU",
                      "nginx preempted / sim switches", "proxy preempted / sim switches",
                      "bare hyper µs (x nginx)", "proxy/bare hyper CPU"], cpu_rows)
            + "\nbare hyper: hyper's HTTP/1.1 server and hyper-util's pooled client, the parts the proxy "
              "forwards with, and nothing else (`examples/bare_hyper_proxy.rs`): the floor for a proxy "
              "built on them.\n")


def big(r: dict) -> str:
    rows = []
    for key, label in (("img2img", "img2img, 4 init images = 32 MiB (intercepted)"),
                       ("pass_through", "32 MiB response (pass-through)")):
        s = r[key]["summary"]
        rows.append([label, f"{s['direct']['median_ms']:.1f}", f"{s['nginx']['median_ms']:.1f} ({_x(s['nginx']['ratio_to_direct'])})",
                     f"{s['proxy']['median_ms']:.1f} ({_x(s['proxy']['ratio_to_direct'])})", _x(s["proxy"]["ratio_to_nginx"])])
    mi, mp = r["img2img"]["memory"], r["pass_through"]["memory"]
    mem = _table(["fresh proxy", "idle VmHWM MiB", "peak MiB", "growth MiB"], [
        ["one 32 MiB img2img", f"{mi['idle_hwm_mib']:.1f}", f"{mi['after_one_request_hwm_mib']:.1f}",
         f"{mi['peak_over_idle_mib']:.1f} (after 5: {mi['after_five_requests_hwm_mib']:.1f} MiB peak)"],
        [mp["responses"] + " responses", f"{mp['idle_hwm_mib']:.1f}", f"{mp['after_256mib_response_hwm_mib']:.1f}",
         f"{mp['growth_mib']:.1f}"],
    ])
    return ("### 2. Big bodies (time per request, median ms)\n\n"
            + _table(["request", "direct", "nginx (x direct)", "proxy (x direct)", "proxy/nginx"], rows)
            + "\nThe proxy's resident memory (VmHWM from /proc, in a fresh process for each):\n\n" + mem)


def nothing(r: dict) -> str:
    s = r["summary"]
    labels = {"direct": "direct", "nginx": "nginx", "proxy-pass": "proxy, txt2img as pass-through",
              "proxy-verify-off": "proxy, intercepted, verify off", "proxy-verify-on": "proxy, intercepted, verify on"}
    rows = []
    for k, label in labels.items():
        v = s[k]
        rows.append([label, f"{v['p50_us']:.0f}", f"{v['p99_us']:.0f}",
                     "–" if k == "direct" else f"+{v['added_p50_us']:.0f} ({_x(v['p50_ratio_to_direct'])})"])
    rows.append(["ref: one round trip, GET options direct", f"{s['rtt-options']['p50_us']:.0f}", f"{s['rtt-options']['p99_us']:.0f}", ""])
    rows.append(["ref: one round trip, GET memory direct", f"{s['rtt-memory']['p50_us']:.0f}", f"{s['rtt-memory']['p99_us']:.0f}", ""])
    return (f"### 3. Intercepted txt2img, nothing to change (wrk, 1 connection, {r['seconds_per_run']} s per run)\n\n"
            + _table(["contender", "p50 µs", "p99 µs", "added p50 over direct"], rows)
            + f"\nVerify on minus off: +{s['verify_on_minus_off_p50_us']:.0f} µs at p50. Options changes on forge-sim "
              f"during the measurement: {s['options_changes_during_measurement']}; reloads: {s['reloads_during_measurement']}.\n")


def idle(r: dict) -> str:
    s = r["summary"]
    rows = [[mode, f"{s[mode]['rps']:.0f}", f"{s[mode]['p50_us']:.0f}", f"{s[mode]['p99_us']:.0f}",
             f"{s[mode]['max_rss_mib_any_round']:.1f}", s[mode]["max_fds"]] for mode in ("without", "with")]
    trend = ", ".join(f"{x['with']['max_rss_mib']:.1f}" for x in r["rounds"])
    return (f"### 4. Many connections ({r['idle_connections']} idle keep-alive + wrk 16 connections on "
            f"`{r['path']}`, {r['seconds_per_run']} s per run)\n\n"
            + _table(["idle connections", "req/s", "p50 µs", "p99 µs", "proxy max VmRSS MiB", "proxy open fds"], rows)
            + f"\np99 with / without: {_x(s['p99_ratio_with_to_without'])}; throughput: {_x(s['rps_ratio_with_to_without'])}; "
              f"idle connections still open at the end: {s['with']['held_open_min']} (least of all rounds). "
              f"The proxy's VmRSS with the idle connections, round by round (one proxy process for all "
              f"rounds; idle at start {r['proxy_idle_at_start']['rss_mib']:.1f} MiB): {trend} MiB.\n")


def decisions(r: dict) -> str:
    w = r["workload"]
    text = (f"### 5. Decisions ({w['requests']} requests of `{w['file']}` (seed {w['seed']}; "
            f"{', '.join(f'{k} {v}' for k, v in w['families'].items())}), {w['clients']} clients, forge-sim "
            f"--time-scale {r['time_scale']}, median of {r['repeats']} run(s); times in simulated seconds)\n\n")
    for setup, ways in r["summary"].items():
        rows, placement = [], []
        for way, m in ways.items():
            rows.append([f"({way}) {r['ways'][way]}", f"{m['ok']:.0f} / {m['generations']:.0f}", f"{m['gpu_time_s']:.0f}",
                         f"{m['makespan_s']:.0f}",
                         f"{m['reloads']:.0f} ({_f(m.get('file_loads'), '{:.0f}')} / {_f(m.get('ram_moves'), '{:.0f}')})",
                         f"{m['slowdowns']:.0f}",
                         f"{m['oom']:.0f} / {m['client_failures']:.0f}", f"{m['wrong_settings']:.0f}",
                         f"{m['queue_wait_p50_s']:.0f} / {m['queue_wait_p99_s']:.0f}",
                         f"{_f(m.get('answer_delivery_wall_ms_p50'), '{:.1f}')} / {_f(m.get('answer_delivery_wall_ms_p99'), '{:.1f}')}"])
            if len(m["per_backend_generations"]) > 1:
                cards = "; ".join(", ".join(f"{card}: " + " ".join(f"{f} {n}" for f, n in fams.items() if n)
                                            for card, fams in b.items()) for b in m["per_backend_generations"])
                placement.append(f"({way}) {cards}")
        text += (f"**{setup}** ({', '.join(r['setups'][setup])}):\n\n"
                 + _table(["way", "ok / generations", "GPU time s", "makespan s", "reloads (file / RAM)", "slowdowns (swap)",
                           "OOM / failed requests", "wrong settings", "queue wait p50 / p99 s",
                           "answer delivery p50 / p99 ms (wall)"], rows) + "\n")
        runs = r["runs"][setup]
        if len(next(iter(runs.values()))) > 1:
            per_run = "; ".join(
                f"({way}) " + ", ".join(f"{x['metrics']['reloads']}/{x['metrics']['makespan_s']:.0f}/"
                                        f"{x['metrics']['queue_wait_p99_s']:.0f}" for x in runs[way])
                for way in ways)
            text += f"Each run, reloads / makespan s / p99 queue wait s: {per_run}.\n\n"
        if placement:
            text += "Generations per backend (first run): " + " — ".join(placement) + "\n\n"
    text += ("Answer delivery: wall-clock milliseconds from the generation's end in forge-sim to the client "
             "having the whole answer (the way back through a proxy, or none); not scaled.\n\n")
    pc = r["policy_check"]
    text += (f"Wrong setting: forge_inference_memory differs by {r['wrong_setting_threshold_mib']} MiB or more from what the "
             f"proxy's policy requires for the family, card and size ({pc['source']}; bench/benchlib/policy.py agrees on "
             f"{pc['agree_with_python_policy']} of {pc['agree_with_python_policy'] + pc['disagree']}).\n")
    return text


def targets_table(results: dict) -> str:
    rows = [[t["scenario"], t["target"], _met(t["met"]), _x(t["ratio"]) if t["ratio"] is not None else "–",
             t["measured"] + (f" ({t['note']})" if t["note"] else "")] for t in results["targets"]]
    return "### Targets (issues 5 and 14)\n\n" + _table(["", "target", "result", "ratio", "measured"], rows)


SECTIONS = {"small": small, "big": big, "nothing": nothing, "idle": idle, "decisions": decisions}


def markdown(results: dict) -> str:
    parts = [f"# forge-vram-proxy benchmark ({results['mode']})\n", header(results), targets_table(results)]
    for name, fn in SECTIONS.items():
        if name in results["scenarios"]:
            parts.append(fn(results["scenarios"][name]))
    if results["failures"]:
        parts.append("### Failures\n\n" + "\n".join(f"- {k}: {v}" for k, v in results["failures"].items()) + "\n")
    return "\n".join(parts)


def targets_text(results: dict) -> str:
    return "\n".join(f"  {_met(t['met']).strip('*'):7} {t['target']}: {t['measured']}"
                     + (f" [ratio {t['ratio']:.2f}]" if t["ratio"] is not None else "") for t in results["targets"])
