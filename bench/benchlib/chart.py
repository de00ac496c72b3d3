"""chart.png: the proxy's cost as ratios to direct access (top) and what its decisions save
(bottom), drawn with matplotlib from a run's results."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"nginx": "#8c8c8c", "proxy": "#1f77b4", "bare hyper (reference)": "#c5b0d5"}
WAY_LABELS = {"a": "(a) direct,\nuntouched", "b": "(b) direct,\narticle recipe", "c": "(c) proxy,\nFIFO",
              "d": "(d) proxy,\naffinity"}
SETUP_COLORS = {"1 backend": "#ff7f0e", "3 backends": "#2ca02c"}


def _bars(ax, groups: list[str], series: dict[str, list], colors: dict, ylabel: str, title: str, ref=None,
          fmt="{:.2f}", log=False):
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [v if v is not None else 0 for v in values]
        bars = ax.bar(xs, vals, width, label=name, color=colors.get(name))
        for b, v in zip(bars, values):
            if v is not None:
                ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    if ref is not None:
        ax.axhline(ref, color="black", linewidth=0.8, linestyle="--")
    if log:
        ax.set_yscale("log")
        top = max((v for values in series.values() for v in values if v), default=1)
        ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top * 1.5]
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)


def draw(results: dict, path: Path) -> None:
    s = results["scenarios"]
    fig = plt.figure(figsize=(15, 9.5))
    grid = fig.add_gridspec(2, 6, hspace=0.45, wspace=0.9)
    if "small" in s:
        ax = fig.add_subplot(grid[0, :4])
        cells = s["small"]["cells"]
        groups = [f"{c['endpoint'].rsplit('/', 1)[1]}\n{c['connections']} conn" for c in cells.values()]
        series = {k: [c["summary"][k]["rps_ratio_to_direct"] for c in cells.values()] for k in ("nginx", "proxy")}
        series["bare hyper (reference)"] = [c["summary"]["bare"]["rps_ratio_to_direct"] for c in cells.values()]
        _bars(ax, groups, series, COLORS, "requests/s, x direct", "1. Small requests: throughput relative to direct (higher is better)", ref=1.0)
    if "big" in s or "nothing" in s:
        ax = fig.add_subplot(grid[0, 4:])
        groups, series = [], {"nginx": [], "proxy": []}
        if "big" in s:
            for key, label in (("img2img", "img2img\n32 MiB in"), ("pass_through", "response\n32 MiB out")):
                sm = s["big"][key]["summary"]
                groups.append(label)
                series["nginx"].append(sm["nginx"]["ratio_to_direct"])
                series["proxy"].append(sm["proxy"]["ratio_to_direct"])
        if "nothing" in s:
            sm = s["nothing"]["summary"]
            for key, label in (("proxy-verify-off", "txt2img p50\nverify off"), ("proxy-verify-on", "txt2img p50\nverify on")):
                groups.append(label)
                series["nginx"].append(sm["nginx"]["p50_ratio_to_direct"])
                series["proxy"].append(sm[key]["p50_ratio_to_direct"])
        _bars(ax, groups, series, COLORS, "time, x direct (log scale)",
              "2-3. Time per request relative to direct\n(lower is better)", ref=1.0, log=True)
    if "decisions" in s:
        d = s["decisions"]
        ways = list(d["ways"])
        groups = [WAY_LABELS.get(w, w) for w in ways]
        metrics = [("reloads", "reloads", "{:.0f}", "5. Model reloads"),
                   ("gpu_time_s", "simulated GPU seconds", "{:.0f}", "5. GPU time"),
                   ("bad", "generations", "{:.0f}", "5. OOM failures + wrong settings (summed)")]
        for i, (key, ylabel, fmt, title) in enumerate(metrics):
            ax = fig.add_subplot(grid[1, 2 * i:2 * i + 2])
            series = {}
            for setup, by_way in d["summary"].items():
                if key == "bad":
                    series[setup] = [by_way[w]["oom"] + by_way[w]["wrong_settings"] for w in ways]
                else:
                    series[setup] = [by_way[w][key] for w in ways]
            _bars(ax, groups, series, SETUP_COLORS, ylabel, title + " (lower is better)", fmt=fmt)
    m = results["machine"]
    fig.suptitle(f"forge-vram-proxy vs direct forge-sim and nginx — {results['mode']} run, {m['nproc']} CPUs "
                 f"({m['cpu_model']}), {results['started_at'][:10]}", fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
