#!/usr/bin/env python3
"""Summarises `wxpush-bench --json` reports and plots throughput against the in-flight window.

    python3 scripts/plot_bench.py [RESULTS_DIR] [--png docs/benchmarks-window.png]

Reads every *.json in RESULTS_DIR (default benches/results, as written by
scripts/bench_matrix.sh as CASE-RUN.json), prints a Markdown table per case with the median
and the spread (min-max) of the runs, and draws sends/s against prefetch for the runs with
100 ms emulator latency, next to the bound prefetch / latency. Needs matplotlib
(`pip install matplotlib`) for the plot only.
"""

import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict


def load(directory):
    cases = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = re.sub(r"-\d+$", "", os.path.splitext(os.path.basename(path))[0])
        with open(path, encoding="utf-8") as f:
            cases[name].append(json.load(f))
    return cases


def get(report, path):
    value = report
    for key in path.split("."):
        if value is None:
            return None
        value = value.get(key) if isinstance(value, dict) else None
    return value


def cell(reports, path, fmt="{:.0f}"):
    values = [v for v in (get(r, path) for r in reports) if isinstance(v, (int, float))]
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


COLUMNS = [
    ("sends/s", "throughput.sends_per_s", "{:.0f}"),
    ("sends/s publish→done", "throughput.sends_per_s_publish_to_done", "{:.0f}"),
    ("ceiling/s", "baseline.rate", "{:.0f}"),
    ("% of ceiling", "throughput.ratio_to_baseline", None),
    ("p50 ms", "latency_ms.p50", "{:.1f}"),
    ("p99 ms", "latency_ms.p99", "{:.1f}"),
    ("p99 added ms", "added_latency_ms.p99", "{:.1f}"),
    ("token fetches", "tokens.issued", "{:.0f}"),
    ("Redis cmds/msg", "redis.commands_per_msg", "{:.2f}"),
    ("peak RSS MB", "memory.peak_rss_mb_max", "{:.1f}"),
    ("CPU s/1000", "cpu.per_1000_msgs", "{:.3f}"),
    ("load", "machine.loadavg_start", None),
]


def table(cases):
    header = ["case", "runs"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in sorted(cases):
        reports = cases[name]
        row = [name, str(len(reports))]
        for title, path, fmt in COLUMNS:
            if title == "% of ceiling":
                scaled = [
                    {"x": get(r, path) * 100} if get(r, path) is not None else {}
                    for r in reports
                ]
                row.append(cell(scaled, "x", "{:.0f}%"))
            elif title == "load":
                row.append(" / ".join(str(get(r, path)).split()[0] for r in reports))
            else:
                row.append(cell(reports, path, fmt))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cases, png):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib (or --no-plot for the table only)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = defaultdict(list)
    for reports in cases.values():
        for r in reports:
            latency = get(r, "params.latency_ms")
            if r.get("mode") == "bulk" and latency is not None and abs(latency - 100) < 1e-6:
                if get(r, "params.workers") == 1:
                    points[get(r, "params.prefetch")].append(get(r, "throughput.sends_per_s"))
    if not points:
        print("no bulk runs with 100 ms latency and one worker: no plot")
        return
    windows = sorted(points)
    medians = [statistics.median(points[w]) for w in windows]
    lows = [m - min(points[w]) for w, m in zip(windows, medians)]
    highs = [max(points[w]) - m for w, m in zip(windows, medians)]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.errorbar(windows, medians, yerr=[lows, highs], fmt="o-", capsize=4,
                label="wxpush, 1 worker process (median, min–max of runs)")
    bound = [w / 0.1 for w in windows]
    ax.plot(windows, bound, "--", color="grey", label="bound: window / 100 ms")
    ax.axhline(2000, color="tab:red", linestyle=":", label="target 2000/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(windows)
    ax.set_xticklabels([str(w) for w in windows])
    ax.set_xlabel("in-flight window (amqp.prefetch)")
    ax.set_ylabel("sends/s (first → last accepted)")
    ax.set_title("Throughput vs in-flight window, emulator latency 100 ms")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png)
    print(f"plot written to {png}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="benches/results")
    parser.add_argument("--png", default="docs/benchmarks-window.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    cases = load(args.results)
    if not cases:
        raise SystemExit(f"no *.json reports in {args.results}")
    print(table(cases))
    if not args.no_plot:
        plot(cases, args.png)


if __name__ == "__main__":
    main()
