"""Plots of benchmark rows (the --json files of model_eval.py and peers.py): time per atom and
peak memory versus the number of atoms, one line per code/preset/mode/system/threads.

    python benchmarks/plot.py OUT_PREFIX rows.json [more.json ...]

writes OUT_PREFIX-time.png and OUT_PREFIX-memory.png.
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(row):
    if "peer" in row:
        return f"{row['peer']} ({row['system']}, {row['threads']} thr)"
    return f"{row['preset']} {row['mode']} {row['dtype']} ({row['system']}, {row['threads']} thr)"


def main(argv):
    prefix, files = argv[0], argv[1:]
    series = defaultdict(list)
    for path in files:
        with open(path) as f:
            for row in json.load(f):
                if "error" not in row and row.get("atoms", 0) > 21:
                    series[label(row)].append(row)
    for what, key, ylabel, scale in (("time", "time_s", "ms per atom (energy + forces)", 1000.0),
                                     ("memory", "peak_rss_gb", "peak memory (GB)", 1.0)):
        fig, ax = plt.subplots(figsize=(8, 5))
        values = []
        for name, rows in sorted(series.items()):
            rows = sorted(rows, key=lambda r: r["atoms"])
            x = [r["atoms"] for r in rows]
            y = [r[key] * scale / (r["atoms"] if what == "time" else 1.0) for r in rows]
            ax.plot(x, y, marker="o", label=name)
            values += y
        ax.set_xscale("log")
        if max(values) < 4 * min(values):  # a narrow range: a linear axis from 0 shows it as it is
            ax.set_ylim(0, 1.1 * max(values))
        else:
            ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{prefix}-{what}.png", dpi=110)
        print(f"wrote {prefix}-{what}.png")


if __name__ == "__main__":
    main(sys.argv[1:])
