"""Draws bench/results.png from the JSON bench/run.py hands over (runs in target/bench-venv).

One panel per workload (each with its own req/s scale: hello world and a 10 MiB stream
differ by 1000x), one bar per server, same colour for a server in every panel.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "nginx-static": "#9e9e9e", "apache-static": "#c7c7c7", "mod_wsgi": "#8c564b",
    "nginx-uwsgi": "#9467bd", "gunicorn": "#bcbd22", "granian": "#17becf",
    "rwsgi-nginx": "#d62728", "rwsgi-apache": "#ff7f0e",
}


def main(src, out):
    data = json.load(open(src))
    servers, workloads, cells = data["servers"], data["workloads"], data["cells"]
    n = len(workloads)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for i, (wl, label) in enumerate(workloads):
        ax = axes[i // cols][i % cols]
        names = [s for s in servers if f"{wl}|{s}" in cells]
        values = [cells[f"{wl}|{s}"] for s in names]
        bars = ax.bar(range(len(names)), values, color=[COLORS.get(s, "#1f77b4") for s in names],
                      edgecolor=["black" if s.startswith("rwsgi") else "none" for s in names])
        top = max(values) if values else 1
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v + top * 0.01,
                    f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{wl}: {label}", fontsize=10)
        ax.set_ylabel("req/s (median of rounds)", fontsize=8)
        ax.set_ylim(0, top * 1.15)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("rwsgi benchmark: req/s per workload per server (higher is better)", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
